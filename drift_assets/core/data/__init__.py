"""The library's data stage: pools, tables and exports."""
