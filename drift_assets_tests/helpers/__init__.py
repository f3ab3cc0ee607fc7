"""What the tests share: helper functions and constants, one module per subject. Test modules import
from here, never from one another; fixtures shared by several modules are in the nearest conftest.py."""
