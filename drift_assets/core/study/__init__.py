"""The library's study stage: comparing selection methods."""
