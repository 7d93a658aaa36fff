"""Decoding strategies, one file each. Importing this package registers them by name."""
from .base import GenerationOutput
from .sampling import decode_steps, generate_autoregressive, greedy_search, sample_with_temperature

__all__ = ["GenerationOutput", "decode_steps", "generate_autoregressive", "greedy_search",
           "sample_with_temperature"]
