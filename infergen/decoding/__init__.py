"""Decoding strategies, one file each. Importing this package registers them by name
(``infergen.generate(..., strategy=name)``): greedy, sample, beam, diverse_beam, contrastive, mcts,
speculative."""
from .base import GenerationOutput
from .beam import beam_search, diverse_beam_search
from .contrastive import contrastive_search
from .mcts import mcts_decode
from .sampling import decode_steps, generate_autoregressive, greedy_search, sample_with_temperature
from .speculative import speculative_decode

__all__ = ["GenerationOutput", "beam_search", "contrastive_search", "decode_steps", "diverse_beam_search",
           "generate_autoregressive", "greedy_search", "mcts_decode", "sample_with_temperature",
           "speculative_decode"]
