"""The library's generation stage: rollouts from the base model and each checkpoint."""
