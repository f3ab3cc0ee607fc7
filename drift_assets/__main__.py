import sys

from drift_assets.cli import main

if __name__ == "__main__":
    sys.exit(main())
