"""Assignment 3 -- stochastic beam search: sample k *distinct* sequences with the Gumbel-top-k trick.

Specification: book/assignments/a3_stochastic_beam.md. Replace each ``raise NotImplementedError``.

Check:  python -m infergen.course check a3 path/to/this_file.py   (the public tests)
Grade:  python -m infergen.course grade a3 path/to/this_file.py   (your teacher adds the hidden checks)
"""
from __future__ import annotations

import torch


def truncated_gumbel(parent: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Children's Gumbels conditioned on their maximum being the parent's value.

    ``parent`` [R, 1]: each parent's perturbed log-probability ``G``; ``perturbed`` [R, V]: the children's
    independent ``phi + Gumbel`` values ``G'``. Return ``-log(exp(-G) - exp(-Z) + exp(-G'))`` with
    ``Z = max(G')`` per row, computed stably (the book page gives the stable form).
    """
    raise NotImplementedError("truncated_gumbel: your code here")


def stochastic_beam_search(model, input_ids, max_new_tokens=100, num_beams=4, num_return_sequences=1,
                           temperature=1.0, *, attention_mask=None, eos_token_id=None, pad_token_id=None,
                           seed=None, generator=None, streamer=None, stopping=None, return_dict=False):
    """Sample ``num_beams`` distinct continuations per prompt without replacement, from
    ``softmax(logits / temperature)`` step by step, and return the ``num_return_sequences`` with the largest
    perturbed log-probability (rows ``b * num_return_sequences ..`` belong to prompt ``b``).

    The decoder protocol of ``infergen.decoding.base``: left-padded ``input_ids`` [B, T] +
    ``attention_mask``; each sequence ends at its own EOS and is padded after it; returns [B * r, T + n]
    or, with ``return_dict=True``, a ``GenerationOutput`` (``logprobs``: the model's untempered log-probs
    of the chosen tokens; ``scores``: the sequences' summed log-probabilities at ``temperature``).
    ``seed``/``generator`` make it reproducible.
    """
    raise NotImplementedError("stochastic_beam_search: your code here")
