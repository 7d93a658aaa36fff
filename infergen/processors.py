"""Logits processors: everything that happens between the model's scores and the sampled token.

A language model returns one score (a *logit*) per vocabulary token. Before a token is picked, a chain of
*processors* reshapes those scores: penalties discourage repetition, temperature sharpens or flattens the
distribution, and truncation rules (top-k, top-p, min-p, typical, epsilon, eta) remove unlikely tokens by
setting their logit to ``-inf``, so that ``softmax`` gives them probability exactly 0.

Conventions shared by every function in this module
---------------------------------------------------
* ``logits`` is a floating tensor of shape ``[V]`` or ``[B, V]`` on any device and of any float dtype; the
  result has the same shape, dtype and device.
* The functions are pure: they never write into the caller's tensor, and they always return a *new*
  tensor (even when the processor is switched off), so the caller may modify the result freely.
* A per-row parameter is either a Python number (the same for every row) or a tensor of shape ``[B]``
  (one value per row, e.g. a batch of requests that asked for different temperatures).
* ``token_ids`` (the history the penalties look at) has shape ``[T]`` with ``[V]`` logits or ``[B, T]``
  with ``[B, V]`` logits; ``None`` means an empty history. Negative ids (``-1``) are padding and are
  ignored, so ragged histories can be padded on either side. Ids ``>= V`` are ignored too, as in
  transformers: some models have a larger embedding table than output layer.
* Probabilities are computed in float32 when the logits are float16/bfloat16 (a softmax over 100k+
  tokens in half precision loses the small probabilities that truncation rules compare).
* Removed tokens get ``-inf``. A row where *everything* was removed cannot be sampled:
  :func:`sample_from_logits` detects it and raises instead of returning a garbage token.

The order of the steps matters (see :data:`PIPELINE_ORDER` and :class:`LogitsPipeline`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._validation import check_logits
from .params import SamplingParams, setting

__all__ = [
    "PIPELINE_ORDER", "LogitsContext", "LogitsPipeline",
    "apply_temperature", "apply_top_k", "apply_top_p", "apply_min_p", "apply_typical", "apply_epsilon",
    "apply_eta", "apply_repetition_penalty", "apply_frequency_penalty", "apply_no_repeat_ngram",
    "apply_logit_bias", "check_finite_row", "safe_probs", "sample_from_logits",
]

#: The order in which :meth:`LogitsPipeline.from_params` runs its steps (the same as transformers and vLLM):
#: first everything that edits scores using the history, then temperature, then the truncation rules, which
#: therefore see the *tempered* distribution. (llama.cpp applies temperature last instead, so its top-p and
#: min-p see the untempered distribution: the same parameters keep different tokens there.)
PIPELINE_ORDER = (
    "logit_bias",          # user bias, added to the raw logits
    "repetition_penalty",  # CTRL rule over prompt + generated ids
    "frequency_penalty",   # frequency / presence (OpenAI) over generated ids only
    "no_repeat_ngram",     # ban n-gram repeats over prompt + generated ids
    "temperature",
    "top_k", "top_p", "min_p", "typical", "epsilon", "eta",
)

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------
def _as_rows(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Validate logits and view them as ``[B, V]``; the flag says whether to squeeze the result back."""
    check_logits(logits)
    return (logits.unsqueeze(0), True) if logits.dim() == 1 else (logits, False)


def _restore(out: torch.Tensor, squeeze: bool) -> torch.Tensor:
    return out.squeeze(0) if squeeze else out


def _prob_dtype(logits: torch.Tensor) -> torch.dtype:
    """Dtype for probabilities: float32 for half-precision logits, the logits' own dtype otherwise."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def _is_everywhere(value, x) -> bool:
    """True when a scalar or per-row tensor parameter equals ``x`` for every row (the step is a no-op)."""
    if isinstance(value, torch.Tensor):
        return bool((value == x).all())
    return value == x


def _row_param(name, value, rows: int, dtype, device, transform=None) -> torch.Tensor:
    """A (validated) scalar or ``[B]`` parameter as a ``[B, 1]`` tensor, ready to broadcast over ``[B, V]``.

    ``transform`` (e.g. ``1 - p``) is applied in float64 on the CPU before the cast, so a per-row tensor
    gives bit-for-bit what the same Python float gives.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.numel() != rows):
            raise ValueError(f"{name} must be a number or a tensor of shape [B] = [{rows}], "
                             f"got shape {tuple(value.shape)}")
        value = value.detach().to("cpu", torch.float64)
    else:
        value = torch.tensor(float(value), dtype=torch.float64)
    if transform is not None:
        value = transform(value)
    return value.reshape(-1, 1).expand(rows, 1).to(device=device, dtype=dtype)


def _check_token_ids(token_ids, batch: int, device, name: str = "token_ids") -> torch.Tensor:
    """Token history as a ``[B, T]`` long tensor on ``device``; ``None`` gives an empty history ``[B, 0]``."""
    if token_ids is None:
        return torch.empty(batch, 0, dtype=torch.long, device=device)
    if isinstance(token_ids, (list, tuple)):
        token_ids = torch.tensor(token_ids, dtype=torch.long)
    if not isinstance(token_ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of token ids, got {type(token_ids).__name__}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {token_ids.dtype}")
    if token_ids.dim() == 1 and batch == 1:
        token_ids = token_ids.unsqueeze(0)
    if token_ids.dim() != 2 or token_ids.shape[0] != batch:
        raise ValueError(f"{name} must have shape [T] (with [V] logits) or [B, T] with B = {batch}, "
                         f"got shape {tuple(token_ids.shape)}")
    return token_ids.to(device=device, dtype=torch.long)


def _token_counts(token_ids, batch: int, vocab: int, device) -> torch.Tensor:
    """``counts[b, t]`` = how often token ``t`` occurs in row ``b`` of the history, in one scatter_add.

    Padding (negative ids) and ids ``>= V`` are routed to a spare column ``V`` that is dropped at the end:
    this keeps the whole count a single vectorized op, with no Python loop over tokens.
    """
    ids = _check_token_ids(token_ids, batch, device)
    valid = (ids >= 0) & (ids < vocab)
    ids = torch.where(valid, ids, vocab)
    counts = torch.zeros(batch, vocab + 1, dtype=torch.long, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))  # in place on our own tensor, not the caller's
    return counts[:, :vocab]


def _entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, probs and entropy ``H = -sum p log p`` (shape ``[B, 1]``) of ``[B, V]`` logits.

    Pitfall: a removed token has ``p = 0`` and ``log p = -inf``, and ``0 * -inf`` is NaN in floating point.
    The limit of ``p log p`` is 0, so the NaNs are dropped with ``nansum``.
    """
    logp = torch.log_softmax(logits.to(_prob_dtype(logits)), dim=-1)
    p = logp.exp()
    return logp, p, -(logp * p).nansum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------------
# Temperature and truncation ("warpers")
# --------------------------------------------------------------------------------------------------------
def _check_temperature(value, name="temperature"):
    return setting("temperature").check(value, name)


def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """Divide the logits by a temperature ``T``: ``softmax(z / T)``.

    ``T < 1`` sharpens the distribution (the gaps between logits grow), ``T > 1`` flattens it, ``T = 1``
    changes nothing. As ``T -> 0`` all the mass goes to the largest logit, so ``T = 0`` is defined as
    *greedy*: every entry except the row's first argmax becomes ``-inf`` (the argmax keeps its logit), and
    sampling from the result always returns the argmax. Dividing by 0 instead would give ``inf``/``NaN``.

    ``temperature`` is a float in ``[0, inf)`` or a ``[B]`` tensor (rows with 0 are greedy, the others are
    divided). Pitfall: a tiny but nonzero ``T`` (say ``1e-30``) overflows the logits to ``inf``; use 0.
    """
    rows, squeeze = _as_rows(logits)
    _check_temperature(temperature)
    if not isinstance(temperature, torch.Tensor) and temperature > 0:
        return _restore(rows / temperature, squeeze)
    t = _row_param("temperature", temperature, rows.shape[0], rows.dtype, rows.device)
    greedy = t == 0
    scaled = rows / torch.where(greedy, torch.ones_like(t), t)
    is_argmax = torch.zeros_like(rows, dtype=torch.bool).scatter(-1, rows.argmax(-1, keepdim=True), True)
    return _restore(scaled.masked_fill(greedy & ~is_argmax, _NEG_INF), squeeze)


def _check_top_k(value, name="top_k"):
    return setting("top_k").check(value, name)


def apply_top_k(logits: torch.Tensor, top_k) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, remove the rest.

    A token survives when its logit is ``>=`` the k-th largest logit, so ties at the boundary may keep more
    than ``k`` tokens (same as transformers). ``top_k`` is an int ``>= 0`` or a ``[B]`` integer tensor;
    ``0``/``None`` switch it off, and a ``k`` larger than the vocabulary keeps everything.
    Pitfall: a fixed ``k`` ignores the shape of the distribution -- it keeps 50 tokens both when the model
    is sure (one token has 99%) and when 5000 tokens are plausible; top-p and min-p adapt instead.
    """
    rows, squeeze = _as_rows(logits)
    _check_top_k(top_k)
    if top_k is None or _is_everywhere(top_k, 0):
        return logits.clone()
    vocab = rows.shape[-1]
    k = _row_param("top_k", top_k, rows.shape[0], torch.long, rows.device).clamp(max=vocab)
    top_values = torch.topk(rows, int(k.max()), dim=-1).values          # [B, k_max], descending
    kth = top_values.gather(-1, (k - 1).clamp(min=0))                  # the k-th largest logit per row
    kth = kth.masked_fill(k == 0, _NEG_INF)                            # rows with k = 0 keep everything
    return _restore(rows.masked_fill(rows < kth, _NEG_INF), squeeze)


def _check_top_p(value, name="top_p"):
    return setting("top_p").check(value, name)


def apply_top_p(logits: torch.Tensor, top_p) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al., 2019): keep the smallest set of top tokens whose mass reaches ``p``.

    Sort ascending, accumulate probabilities, and remove every token whose cumulative probability is
    ``<= 1 - p``: those tokens together hold at most ``1 - p``. The token that *crosses* the boundary stays,
    so the kept set holds at least ``p``, and the top token always stays. Same as transformers'
    ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``.

    ``top_p`` is in ``(0, 1]`` (``1`` = off) or a ``[B]`` tensor. Pitfall: computing the mask on sorted
    logits and forgetting to scatter it back to vocabulary order removes the wrong tokens.
    """
    rows, squeeze = _as_rows(logits)
    _check_top_p(top_p)
    if _is_everywhere(top_p, 1):
        return logits.clone()
    batch, dtype = rows.shape[0], _prob_dtype(rows)
    sorted_logits, sorted_idx = torch.sort(rows, dim=-1)                       # ascending
    cumulative = sorted_logits.to(dtype).softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= _row_param("top_p", top_p, batch, dtype, rows.device, lambda p: 1 - p)
    remove[..., -1] = False                                                    # keep the top token
    remove = remove.scatter(-1, sorted_idx, remove)                            # back to vocab order
    remove &= _row_param("top_p", top_p, batch, dtype, rows.device) < 1        # rows with p = 1 are off
    return _restore(rows.masked_fill(remove, _NEG_INF), squeeze)


def _check_min_p(value, name="min_p"):
    return setting("min_p").check(value, name)


def apply_min_p(logits: torch.Tensor, min_p) -> torch.Tensor:
    """Min-p (Nguyen et al., 2024): remove tokens with ``p < min_p * p_max``.

    The threshold scales with the top token's probability: a confident model (``p_max = 0.9``) prunes hard,
    an uncertain one (``p_max = 0.05``) keeps many candidates. ``min_p`` is in ``[0, 1]`` (``0`` = off,
    ``1`` keeps only the argmax and its ties) or a ``[B]`` tensor. Run it after temperature, as transformers
    and vLLM do: it then sees the distribution you will actually sample from.
    """
    rows, squeeze = _as_rows(logits)
    _check_min_p(min_p)
    if _is_everywhere(min_p, 0):
        return logits.clone()
    dtype = _prob_dtype(rows)
    probs = rows.to(dtype).softmax(dim=-1)
    threshold = _row_param("min_p", min_p, rows.shape[0], dtype, rows.device) * probs.amax(-1, keepdim=True)
    remove = (probs < threshold).scatter(-1, probs.argmax(-1, keepdim=True), False)  # keep >= 1 token
    return _restore(rows.masked_fill(remove, _NEG_INF), squeeze)


def _check_typical(value, name="typical_p"):
    return setting("typical_p").check(value, name)


def apply_typical(logits: torch.Tensor, typical_p) -> torch.Tensor:
    """Locally typical sampling (Meister et al., 2022): keep the tokens whose surprise is closest to the entropy.

    Each token's surprise is ``-log p``; the expected surprise is the entropy ``H``. Tokens are ranked by
    ``|-log p - H|`` (most "typical" first) and kept until their cumulative mass reaches ``typical_p``.
    Unlike top-p, this can drop the most likely token when it is far *more* likely than typical.
    ``typical_p`` is in ``(0, 1]`` (``1`` = off) or a ``[B]`` tensor. Same as transformers'
    ``TypicalLogitsWarper`` with ``min_tokens_to_keep=1``.
    """
    rows, squeeze = _as_rows(logits)
    _check_typical(typical_p)
    if _is_everywhere(typical_p, 1):
        return logits.clone()
    batch, vocab, dtype = rows.shape[0], rows.shape[-1], _prob_dtype(rows)
    logp, _, entropy = _entropy(rows)
    shifted = (-logp - entropy).abs()
    sorted_shift, sorted_idx = torch.sort(shifted, dim=-1)                      # most typical first
    cumulative = rows.gather(-1, sorted_idx).to(dtype).softmax(dim=-1).cumsum(dim=-1)
    mass = _row_param("typical_p", typical_p, batch, dtype, rows.device)
    last = (cumulative < mass).sum(dim=-1, keepdim=True).clamp(max=vocab - 1)   # first index reaching the mass
    remove = sorted_shift > sorted_shift.gather(-1, last)
    remove[..., 0] = False                                                      # keep at least one token
    remove = remove.scatter(-1, sorted_idx, remove) & (mass < 1)
    return _restore(rows.masked_fill(remove, _NEG_INF), squeeze)


def _check_epsilon(value, name="epsilon"):
    return setting("epsilon").check(value, name)


def apply_epsilon(logits: torch.Tensor, epsilon) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al., 2022): remove tokens with ``p < epsilon``, but never the top token.

    A fixed absolute floor (typical values ``3e-4`` .. ``9e-4``). ``epsilon`` is in ``[0, 1)`` (``0`` = off)
    or a ``[B]`` tensor. If no token reaches ``epsilon`` the top token(s) survive, so a row is never emptied.
    """
    rows, squeeze = _as_rows(logits)
    _check_epsilon(epsilon)
    if _is_everywhere(epsilon, 0):
        return logits.clone()
    dtype = _prob_dtype(rows)
    probs = rows.to(dtype).softmax(dim=-1)
    remove = probs < _row_param("epsilon", epsilon, rows.shape[0], dtype, rows.device)
    remove &= rows < rows.amax(dim=-1, keepdim=True)
    return _restore(rows.masked_fill(remove, _NEG_INF), squeeze)


def apply_eta(logits: torch.Tensor, epsilon) -> torch.Tensor:
    """Eta sampling (Hewitt et al., 2022): an entropy-dependent floor ``eta = min(eps, sqrt(eps) * exp(-H))``.

    Tokens with ``p < eta`` are removed (never the top token). When the model is uncertain (high entropy
    ``H``) the floor drops, so more candidates survive; when it is sure, the floor rises to ``eps``.
    ``epsilon`` is in ``[0, 1)`` (``0`` = off) or a ``[B]`` tensor; typical values ``3e-4`` .. ``2e-3``.
    Same as transformers' ``EtaLogitsWarper``.
    """
    rows, squeeze = _as_rows(logits)
    _check_epsilon(epsilon)
    if _is_everywhere(epsilon, 0):
        return logits.clone()
    _, probs, entropy = _entropy(rows)
    eps = _row_param("epsilon", epsilon, rows.shape[0], probs.dtype, rows.device)
    eta = torch.minimum(eps, eps.sqrt() * torch.exp(-entropy))
    remove = (probs < eta) & (rows < rows.amax(dim=-1, keepdim=True))
    return _restore(rows.masked_fill(remove, _NEG_INF), squeeze)


# --------------------------------------------------------------------------------------------------------
# Penalties and biases (they use the token history)
# --------------------------------------------------------------------------------------------------------
def _check_repetition_penalty(value, name="penalty"):
    return setting("repetition_penalty").check(value, name)


def apply_repetition_penalty(logits: torch.Tensor, token_ids, penalty) -> torch.Tensor:
    """Repetition penalty of CTRL (Keskar et al., 2019): make every token already seen less likely.

    For each token id present in ``token_ids`` (infergen's pipeline passes prompt + generated ids, as
    transformers does), counted once however often it occurs::

        logit < 0  ->  logit * penalty        logit >= 0  ->  logit / penalty

    Multiplying a negative logit and dividing a positive one both lower it when ``penalty > 1``. The naive
    ``logit / penalty`` would *raise* a negative logit. ``penalty`` is in ``(0, inf)``: ``1`` = off,
    ``< 1`` rewards repetition; typical 1.1 .. 1.3. Pitfall: the effect depends on the logit's scale and
    sign, so the same penalty is not comparable across models.
    """
    rows, squeeze = _as_rows(logits)
    _check_repetition_penalty(penalty)
    batch, vocab = rows.shape
    seen = _token_counts(token_ids, batch, vocab, rows.device) > 0
    if _is_everywhere(penalty, 1):
        return logits.clone()
    theta = _row_param("penalty", penalty, batch, rows.dtype, rows.device)
    penalized = torch.where(rows < 0, rows * theta, rows / theta)
    return _restore(torch.where(seen, penalized, rows), squeeze)


def _check_openai_penalty(value, name):
    return setting("frequency_penalty").check(value, name)


def apply_frequency_penalty(logits: torch.Tensor, token_ids, frequency_penalty=0.0,
                            presence_penalty=0.0) -> torch.Tensor:
    """Frequency and presence penalties (OpenAI API, vLLM): subtract a cost that grows with use.

    ``logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0)``

    The frequency term grows with every repetition; the presence term is a flat cost for having appeared
    at all. Both are in ``[-2, 2]`` (negative values encourage repetition) or ``[B]`` tensors. Additive,
    so unlike the CTRL penalty the effect does not depend on the logit's sign.

    Which tokens are counted is the **caller's** choice: this function counts exactly ``token_ids``.
    infergen's decoders and :class:`LogitsPipeline` pass the *generated* tokens only, as OpenAI and vLLM do,
    so that a long prompt does not penalize the words of the question. The counting is one ``scatter_add``
    (no Python loop over tokens); padding ids (``-1``) are not counted.
    """
    rows, squeeze = _as_rows(logits)
    _check_openai_penalty(frequency_penalty, "frequency_penalty")
    _check_openai_penalty(presence_penalty, "presence_penalty")
    batch, vocab = rows.shape
    dtype = _prob_dtype(rows)
    counts = _token_counts(token_ids, batch, vocab, rows.device).to(dtype)
    if _is_everywhere(frequency_penalty, 0) and _is_everywhere(presence_penalty, 0):
        return logits.clone()
    freq = _row_param("frequency_penalty", frequency_penalty, batch, dtype, rows.device)
    pres = _row_param("presence_penalty", presence_penalty, batch, dtype, rows.device)
    cost = freq * counts + pres * (counts > 0).to(dtype)
    return _restore(rows - cost.to(rows.dtype), squeeze)


def _check_ngram_size(value, name="ngram_size"):
    return setting("no_repeat_ngram_size").check(value, name)


def apply_no_repeat_ngram(logits: torch.Tensor, token_ids, ngram_size) -> torch.Tensor:
    """Forbid any n-gram from occurring twice (as transformers' ``NoRepeatNGramLogitsProcessor``).

    With history ``x_1 .. x_T`` and ``n = ngram_size``, the next token ``y`` would complete the n-gram
    ``(x_{T-n+2}, .., x_T, y)``. If that prefix of ``n - 1`` tokens already occurred followed by some token
    ``w``, then ``w`` is banned (set to ``-inf``). Vectorized: every window of ``n`` tokens is compared to
    the current prefix at once, and the last token of each matching window is banned.

    ``ngram_size`` is an int ``>= 0`` (``0`` = off; ``1`` bans every token already seen). Padding (negative
    ids) is first moved to the front of each row with a stable sort, so real tokens stay in order and
    windows that touch padding are ignored. Pitfall: it is a hard ban -- with ``n = 2`` a text about
    "New York" can name the city only once.
    """
    rows, squeeze = _as_rows(logits)
    _check_ngram_size(ngram_size)
    batch, vocab = rows.shape
    ids = _check_token_ids(token_ids, batch, rows.device)
    n = ngram_size
    if n == 0 or ids.shape[1] < n:
        return logits.clone()
    real = ids >= 0
    order = torch.sort(real.to(torch.int8), dim=-1, stable=True).indices       # padding first, order kept
    ids, real = ids.gather(-1, order), real.gather(-1, order)
    prefix = ids[:, ids.shape[1] - n + 1:]                                     # last n - 1 tokens
    windows = ids.unfold(1, n, 1)                                              # [B, T - n + 1, n]
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1) & real.unfold(1, n, 1).all(-1)
    last = windows[..., -1]
    banned_ids = torch.where(matches & (last < vocab), last, vocab)            # no match -> spare column
    banned = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=rows.device).scatter(-1, banned_ids, True)
    return _restore(rows.masked_fill(banned[:, :vocab], _NEG_INF), squeeze)


def _check_logit_bias(logit_bias, vocab=None, name="logit_bias"):
    """Validate ``{token_id: bias}``; ids are checked against the vocabulary when it is known."""
    return setting("logit_bias").check(logit_bias, name, vocab=vocab)


def apply_logit_bias(logits: torch.Tensor, logit_bias) -> torch.Tensor:
    """Add a fixed bias to chosen tokens: ``logit[t] += logit_bias[t]`` (the OpenAI ``logit_bias`` option).

    ``logit_bias`` is a dict ``{token_id: bias}`` with ids in ``[0, V)`` and biases in ``[-100, 100]``, the
    same for every row. ``-100`` effectively bans a token and ``+100`` effectively forces it; small values
    nudge. It runs first, on the raw logits, so the later steps see the biased distribution.
    """
    rows, squeeze = _as_rows(logits)
    _check_logit_bias(logit_bias, vocab=rows.shape[-1])
    if not logit_bias:
        return logits.clone()
    ids = torch.tensor([int(t) for t in logit_bias], dtype=torch.long, device=rows.device)
    values = torch.tensor([float(b) for b in logit_bias.values()], dtype=rows.dtype, device=rows.device)
    bias = torch.zeros(rows.shape[-1], dtype=rows.dtype, device=rows.device).index_put((ids,), values)
    return _restore(rows + bias, squeeze)


# --------------------------------------------------------------------------------------------------------
# From logits to a token
# --------------------------------------------------------------------------------------------------------
def check_finite_row(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Raise ``ValueError`` if some row cannot be sampled: all ``-inf``, or containing NaN or ``+inf``.

    Filters can empty a row (e.g. every token banned), and a bad model step can produce NaN. ``softmax``
    of such a row is NaN everywhere, and ``torch.multinomial`` then fails with an obscure message -- or,
    worse, on some devices returns an arbitrary token. Checking costs one device synchronization.
    Returns ``logits`` unchanged.

    One pass decides: a row's maximum is finite exactly when the row has no NaN (``amax`` propagates
    NaN), no ``+inf``, and at least one finite value. Only a bad row pays for finding out which case.
    """
    rows, _ = _as_rows(logits)
    if bool(torch.isfinite(rows.amax(dim=-1)).all()):
        return logits
    has_nan = rows.isnan().any(dim=-1)
    all_neg_inf = (rows == _NEG_INF).all(dim=-1)
    has_pos_inf = (rows == math.inf).any(dim=-1)
    bad = has_nan | all_neg_inf | has_pos_inf
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        if has_nan[i]:
            reason = "contain NaN"
        elif all_neg_inf[i]:
            reason = "are all -inf (every token was removed)"
        else:
            reason = "contain +inf (softmax would be NaN)"
        raise ValueError(f"{name} for row {i} {reason}: nothing can be sampled")
    return logits


def safe_probs(logits: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)`` after :func:`check_finite_row`; float32 for half-precision logits.

    ``-inf`` logits get probability exactly 0: ``exp(-inf - max) = 0``. softmax subtracts the row maximum
    before exponentiating, so large logits do not overflow.
    """
    check_finite_row(logits)
    return logits.to(_prob_dtype(logits)).softmax(dim=-1)


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits)``; returns a LongTensor ``[B]`` (a 0-d tensor for ``[V]``).

    Rows with a single finite logit (greedy rows from temperature 0, or top-k 1) return that token by
    ``argmax``: exact, with no floating-point round trip. If every row is such a row, no random number is
    drawn; otherwise one draw per row is made with ``torch.multinomial`` (pass a seeded ``generator`` on
    the logits' device for reproducible runs). Rows that cannot be sampled raise ``ValueError`` (see
    :func:`check_finite_row`).
    """
    rows, squeeze = _as_rows(logits)
    probs = safe_probs(rows)
    greedy_rows = torch.isfinite(rows).sum(dim=-1) == 1
    tokens = rows.argmax(dim=-1)
    if not bool(greedy_rows.all()):
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tokens = torch.where(greedy_rows, tokens, sampled)
    return _restore(tokens, squeeze)


# --------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogitsContext:
    """What a pipeline step may look at besides the logits: the token history, ``[T]`` or ``[B, T]``."""

    prompt_ids: torch.Tensor | None = None
    generated_ids: torch.Tensor | None = None

    @property
    def all_ids(self) -> torch.Tensor | None:
        """Prompt followed by generated ids, ``[B, T_prompt + T_gen]`` (``None`` if there is neither)."""
        parts = [p for p in (self.prompt_ids, self.generated_ids) if p is not None]
        if len(parts) < 2:
            return parts[0] if parts else None
        parts = [torch.as_tensor(p, dtype=torch.long) for p in parts]
        parts = [p.unsqueeze(0) if p.dim() == 1 else p for p in parts]
        return torch.cat([parts[0], parts[1].to(parts[0].device)], dim=1)


Step = Callable[[torch.Tensor, LogitsContext], torch.Tensor]


class LogitsPipeline:
    """An ordered list of named steps, each ``fn(logits, context) -> new logits``.

    Build one from sampling parameters with :meth:`from_params`, then call it once per decoding step::

        pipe = LogitsPipeline.from_params(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
        logits = pipe(logits, prompt_ids=prompt, generated_ids=generated)
        token = sample_from_logits(logits, generator)

    ``from_params`` uses the order of transformers and vLLM (:data:`PIPELINE_ORDER`):

    1. ``logit_bias``  2. ``repetition_penalty`` (prompt + generated ids)
    3. ``frequency_penalty`` (frequency and presence, generated ids only)
    4. ``no_repeat_ngram`` (prompt + generated ids)  5. ``temperature``
    6. ``top_k``  7. ``top_p``  8. ``min_p``  9. ``typical``  10. ``epsilon``  11. ``eta``

    Order matters: top-p after temperature keeps a different set than top-p before it, because temperature
    changes the probabilities top-p sums. Custom steps can be appended (or inserted) with :meth:`add`.
    ``LogitsPipeline(steps, temperature)`` builds one by hand; ``temperature`` only feeds :attr:`is_greedy`.
    """

    def __init__(self, steps=(), temperature=1.0):
        self._steps: list[tuple[str, Step]] = []
        self._history_free: set[str] = set()
        self.temperature = temperature
        for name, fn in steps:
            self.add(name, fn)

    @classmethod
    def from_params(cls, params: SamplingParams | None = None, *, sampling: bool = True,
                    **kwargs) -> "LogitsPipeline":
        """The pipeline of ``params`` (a :class:`~infergen.params.SamplingParams`, or its fields as keywords).

        Only the steps that change something are built (defaults are the "off" values). ``sampling=False``
        builds only the score-editing steps (bias, penalties, n-gram bans), as deterministic searches use
        them. With ``temperature=0`` (greedy) the truncation steps are skipped: each of them always keeps
        the top token, so after greedy masking they cannot change the result.
        """
        if params is None:
            params = SamplingParams.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError("give either a SamplingParams or keyword settings, not both")
        p = params
        pipe = cls(temperature=p.temperature if sampling else 0.0)
        active = p.active()
        if "logit_bias" in active:
            pipe.add("logit_bias", lambda z, ctx: apply_logit_bias(z, p.logit_bias), history=False)
        if "repetition_penalty" in active:
            pipe.add("repetition_penalty",
                     lambda z, ctx: apply_repetition_penalty(z, ctx.all_ids, p.repetition_penalty))
        if "frequency_penalty" in active or "presence_penalty" in active:
            pipe.add("frequency_penalty", lambda z, ctx: apply_frequency_penalty(
                z, ctx.generated_ids, p.frequency_penalty, p.presence_penalty))
        if "no_repeat_ngram_size" in active:
            pipe.add("no_repeat_ngram", lambda z, ctx: apply_no_repeat_ngram(z, ctx.all_ids, p.no_repeat_ngram_size))
        if not sampling:
            return pipe
        if "temperature" in active:
            pipe.add("temperature", lambda z, ctx: apply_temperature(z, p.temperature), history=False)
        if pipe.is_greedy:
            return pipe
        warpers = [("top_k", apply_top_k, "top_k"), ("top_p", apply_top_p, "top_p"), ("min_p", apply_min_p, "min_p"),
                   ("typical", apply_typical, "typical_p"), ("epsilon", apply_epsilon, "epsilon"),
                   ("eta", apply_eta, "eta")]
        for name, fn, field in warpers:
            if field in active:
                pipe.add(name, lambda z, ctx, fn=fn, value=active[field]: fn(z, value), history=False)
        return pipe

    def add(self, name: str, fn: Step, *, before: str | None = None, history: bool = True) -> "LogitsPipeline":
        """Append a step ``fn(logits, context) -> logits`` (or insert it before the step named ``before``).

        ``context`` is a :class:`LogitsContext` with ``prompt_ids``, ``generated_ids`` and ``all_ids``. The step
        must not modify ``logits`` in place. ``history=False`` declares that the step never reads the
        context, so decoders need not keep the token history for it (the default assumes it does).
        Returns the pipeline, so calls can be chained.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"fn for step {name!r} must be callable, got {type(fn).__name__}")
        names = [n for n, _ in self._steps]
        if name in names:
            raise ValueError(f"name {name!r} is already a step of this pipeline: {names}")
        if before is None:
            self._steps.append((name, fn))
        elif before in names:
            self._steps.insert(names.index(before), (name, fn))
        else:
            raise ValueError(f"before must name an existing step, one of {names}, got {before!r}")
        if not history:
            self._history_free.add(name)
        return self

    def add_registered(self, name: str, *, before: str | None = None, **params) -> "LogitsPipeline":
        """Append the processor registered as ``name`` (see :func:`infergen.register_processor`).

        A registered processor is called as ``fn(logits, context, **params)``; ``params`` are bound here,
        once, and the step is named ``name``. This is how your own processor joins a pipeline by name::

            @infergen.register_processor("top_n_sigma")
            def top_n_sigma(logits, context, n=1.0): ...

            pipe = LogitsPipeline.from_params(temperature=0.8).add_registered("top_n_sigma", n=1.0)
        """
        from .registry import get_processor  # raises a ValueError listing the registered names

        fn = get_processor(name)
        return self.add(name, lambda z, ctx: fn(z, ctx, **params), before=before)

    @property
    def steps(self) -> list[tuple[str, Step]]:
        """The steps as ``(name, callable)`` pairs, in the order they run (a copy)."""
        return list(self._steps)

    @property
    def uses_history(self) -> bool:
        """Does some step read the token history (penalties, n-gram bans, custom steps)?"""
        return any(name not in self._history_free for name, _ in self._steps)

    @property
    def is_plain_argmax(self) -> bool:
        """Greedy with no step but the temperature: the chosen token is simply the argmax of the logits."""
        return self.is_greedy and all(name == "temperature" for name, _ in self._steps)

    @property
    def is_greedy(self) -> bool:
        """True when the temperature is 0 (for a ``[B]`` tensor: 0 in every row)."""
        return _is_everywhere(self.temperature, 0)

    def __call__(self, logits: torch.Tensor, prompt_ids=None, generated_ids=None) -> torch.Tensor:
        """Run every step in order and return new logits; the input is never modified."""
        check_logits(logits)
        context = LogitsContext(prompt_ids=prompt_ids, generated_ids=generated_ids)
        out = logits
        for _, fn in self._steps:
            out = fn(out, context)
        return logits.clone() if out is logits else out

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"LogitsPipeline({[name for name, _ in self._steps]})"
