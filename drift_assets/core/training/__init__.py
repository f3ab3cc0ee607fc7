"""The library's training stage: fine-tuning and evaluating."""
