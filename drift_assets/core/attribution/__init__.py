"""The library's attribution stage: influence scores and the selection."""
