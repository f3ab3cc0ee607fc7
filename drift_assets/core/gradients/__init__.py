"""The library's gradients stage: projected per-example gradients."""
