"""The library's grading stage: answer checkers and signed weights."""
