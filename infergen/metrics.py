"""Measuring generated text: repetition, diversity and likelihood.

Two questions decide whether a decoding strategy is good, and they pull in opposite directions.

**Does it repeat itself?** Greedy and beam search fall into loops ("the the the", or the same sentence
again and again). Counting n-grams measures it without any model:

* ``rep_n`` -- the share of n-grams that are repeats, in percent (Su et al., 2022; Welleck et al., 2020):
  ``rep-n = 100 * (1 - unique n-grams / total n-grams)``. 0 means no n-gram occurs twice.
* ``diversity`` -- ``100 * prod_{n=2}^{4} (1 - rep-n / 100)``: high only when bigrams, trigrams and
  4-grams are all rarely repeated (the figure reported for contrastive search).
* ``distinct_n`` -- the fraction of *distinct* n-grams across a whole corpus (Li et al., 2016), in
  ``[0, 1]``: it also notices when different prompts get the same continuation.

**Does the model find it likely?** Random tokens are maximally diverse and useless. The model's own
log-likelihood of the text it produced measures how far a strategy strays from what the model expects:

* ``sequence_logprob`` -- ``sum_t log p(y_t | x, y_<t)`` of a continuation ``y`` given a prompt ``x``,
  for a whole batch in one forward pass;
* ``mean_logprob`` -- the same divided by the number of continuation tokens (comparable across lengths);
* ``perplexity`` -- ``exp(-mean log-prob)``: the effective number of equally likely choices per token.

**How sure is a difference?** A handful of prompts and one seed give one number per strategy; another
handful would give another. :func:`infergen.bench.stats.bootstrap_interval` (benchmark methodology, in the
benchmark companion) puts a 95% confidence interval around any of the numbers above (or around per-prompt
differences between two strategies) by resampling the prompts.

Neither axis alone is a quality measure: greedy text has the best likelihood and the worst repetition,
temperature-2 text the reverse. Good strategies sit in between; chapters report both numbers.

Pitfalls of the naive versions
------------------------------
* Counting n-grams over model *token ids* and over *words* gives different numbers; the published
  figures use whitespace-separated words, which is the default here (``str.split``).
* rep-n counts repeats *within* each text and pools the counts over the corpus (sum of unique /
  sum of total); two texts that share a phrase do not count as repetition. distinct-n pools the n-grams
  themselves, so it does.
* The reference implementation of rep-n (SimCTG) stops one n-gram early (``while end < len``); here
  every n-gram of the text is counted.
* Scoring a batch of left-padded prompts needs the attention mask *and* the right positions; scoring row
  by row is correct but slow. ``sequence_logprob`` does the batch in one forward pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from ._validation import check_input_ids, check_number

__all__ = ["ngrams", "rep_n", "distinct_n", "diversity", "sequence_logprob", "mean_logprob", "perplexity"]


def _as_token_lists(texts, tokenize: Callable[[str], Sequence]) -> list[list]:
    """A text, a list of texts, or a list of token sequences -> a list of token lists."""
    if isinstance(texts, str) or (isinstance(texts, torch.Tensor) and texts.dim() < 2):
        texts = [texts]  # one text; a [B, T] tensor is a batch of rows
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string, a list of strings or a list of token sequences, "
                        f"got {type(texts).__name__}")
    bad = [type(item).__name__ for item in texts if not isinstance(item, (str, torch.Tensor, Iterable))]
    if bad:
        raise TypeError(f"each text must be a string or a sequence of tokens, got {bad[0]}")
    return [list(tokenize(item)) if isinstance(item, str) else item.flatten().tolist()
            if isinstance(item, torch.Tensor) else list(item) for item in texts]


def _ngrams_per_text(texts, n: int, tokenize) -> tuple[list[list[tuple]], int]:
    """The n-grams of each text (``n`` checked once), and how many there are in all."""
    check_number("n", n, low=1, integer=True)
    grams = [ngrams(tokens, n) for tokens in _as_token_lists(texts, tokenize)]
    return grams, sum(map(len, grams))


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """All ``len(tokens) - n + 1`` contiguous n-grams of a token sequence, as tuples (none if it is shorter)."""
    check_number("n", n, low=1, integer=True)
    tokens = list(tokens)
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(texts, n: int = 2, tokenize: Callable[[str], Sequence] = str.split) -> float:
    """Repetition rate in percent: ``100 * (1 - unique n-grams / total n-grams)``.

    ``texts`` is one string, a list of strings, or a list of token sequences (e.g. token ids). Strings are
    split with ``tokenize`` (whitespace by default, as in the published figures). Unique n-grams are
    counted within each text and both counts are summed over the texts before dividing (pooled). Returns
    NaN when no text has ``n`` tokens (there is nothing to measure).

    Example: ``"a b a b"`` has bigrams ``ab, ba, ab``: 2 unique of 3, so rep-2 = 33.3.
    """
    grams, total = _ngrams_per_text(texts, n, tokenize)
    return float("nan") if total == 0 else 100.0 * (1.0 - sum(len(set(g)) for g in grams) / total)


def distinct_n(texts, n: int = 2, tokenize: Callable[[str], Sequence] = str.split) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / total n-grams over the whole corpus, in ``[0, 1]``.

    Unlike :func:`rep_n`, the n-grams of all texts go into one set, so the same phrase in two different
    texts counts once: a strategy that answers every prompt alike scores low. NaN when there is no n-gram.

    Example: ``["a b", "a b"]`` has bigrams ``ab, ab``: 1 distinct of 2, so distinct-2 = 0.5
    (whereas rep-2 of the same corpus is 0: neither text repeats itself).
    """
    grams, total = _ngrams_per_text(texts, n, tokenize)
    return float("nan") if total == 0 else len(set().union(*grams)) / total


def diversity(texts, tokenize: Callable[[str], Sequence] = str.split) -> float:
    """Diversity in percent (Su et al., 2022): ``100 * prod over n in (2, 3, 4) of (1 - rep-n / 100)``.

    100 means no repeated bigram, trigram or 4-gram; a text stuck in a loop scores near 0. Because it is a
    product, one badly repeated order is enough to pull it down. NaN when some order has no n-gram.
    """
    return 100.0 * math.prod(1.0 - rep_n(texts, n, tokenize) / 100.0 for n in (2, 3, 4))


def sequence_logprob(model, input_ids: torch.Tensor, continuation_ids: torch.Tensor, *, attention_mask=None,
                     continuation_mask=None, reduction: str = "sum") -> torch.Tensor:
    """Log-likelihood the model assigns to ``continuation_ids`` given the prompt ``input_ids``.

    ``log p(y | x) = sum_t log p(y_t | x, y_1 .. y_{t-1})`` -- the chain rule of probability, read off
    one forward pass over ``[x, y]``: the logits at position ``T - 1 + t`` predict ``y_t``.

    Shapes: ``input_ids`` [B, T] (left-padded, ``attention_mask`` marks real tokens), ``continuation_ids``
    [B, n] (right-padded, ``continuation_mask`` marks real tokens; padding counts 0). ``model`` is an
    infergen model or any transformers causal LM. ``reduction``: ``"sum"`` -> [B] total log-prob,
    ``"mean"`` -> [B] per real token, ``"none"`` -> [B, n] per token (0 at padding). Float32 on the
    model's device.

    This scores text *under the model's own distribution* (no temperature, no truncation), which is what
    makes strategies comparable: a decoder's ``GenerationOutput.logprobs`` holds the same numbers for the
    tokens it generated. Pitfall: a batch of prompts of different lengths must be padded on the left and
    masked; the positions then follow the real tokens, so each row scores exactly as it would alone.
    """
    from .decoding.base import prepare
    from .decoding.steps import token_logprobs

    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be one of 'sum', 'mean', 'none', got {reduction!r}")
    # the prompt (ids, left-padded mask, context) is checked where every decoder checks it
    setup, _ = prepare(model, input_ids, 0, attention_mask=attention_mask, allocate=False)
    model, cont = setup.model, check_input_ids(continuation_ids, "continuation_ids")
    (B, T), n, vocab = setup.input_ids.shape, cont.shape[1], model.config.vocab_size
    if cont.shape[0] != B:
        raise ValueError(f"continuation_ids must have the batch size of input_ids ({B}), got {cont.shape[0]}")
    if int(cont.min()) < 0 or int(cont.max()) >= vocab:
        raise ValueError(f"continuation_ids must be token ids in [0, {vocab - 1}], got values in "
                         f"[{int(cont.min())}, {int(cont.max())}]")
    if T + n > model.max_context:
        raise ValueError(f"prompt + continuation = {T + n} tokens exceed the model's context of "
                         f"{model.max_context}")
    cont_mask = torch.ones_like(cont, dtype=torch.bool) if continuation_mask is None else continuation_mask
    if not isinstance(cont_mask, torch.Tensor) or tuple(cont_mask.shape) != (B, n):
        raise ValueError(f"continuation_mask must be a tensor of shape {(B, n)}, got "
                         f"{getattr(cont_mask, 'shape', type(cont_mask).__name__)}")
    ids = torch.cat([setup.input_ids, cont.to(model.device)], 1)
    mask = torch.cat([setup.attention_mask, cont_mask.to(model.device, torch.bool)], 1)
    with torch.inference_mode():
        logits = model(ids, model.new_cache(B, T + n), attention_mask=mask, logits="all").logits[:, T - 1:-1]
        token_lp = token_logprobs(logits, ids[:, T:]).masked_fill(~mask[:, T:], 0.0)
    total = token_lp.sum(-1)
    return {"none": token_lp, "sum": total, "mean": total / mask[:, T:].sum(-1).clamp(min=1)}[reduction]


def mean_logprob(model, input_ids, continuation_ids, **kwargs) -> torch.Tensor:
    """Average log-probability per continuation token, [B] (see :func:`sequence_logprob`).

    Dividing by the length makes continuations of different lengths comparable: the sum always falls as
    text gets longer, the mean does not. A row without real continuation tokens gives 0.
    """
    return sequence_logprob(model, input_ids, continuation_ids, reduction="mean", **kwargs)


def perplexity(model, input_ids, continuation_ids, **kwargs) -> torch.Tensor:
    """Perplexity of the continuation, [B]: ``exp(-mean log-prob)``.

    If the model spread its probability uniformly over ``k`` tokens at every step, the perplexity would be
    ``k``: read it as the number of choices the model hesitates between per token. Lower = the model finds
    the text more predictable (which is not the same as better text: loops have very low perplexity).
    """
    return torch.exp(-mean_logprob(model, input_ids, continuation_ids, **kwargs))
