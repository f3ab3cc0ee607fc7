"""The tiny model the SFT tests fine-tune."""

from drift_assets.tasks.tiny_model import TinyLlamaShape

SHAPE = TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=96)
