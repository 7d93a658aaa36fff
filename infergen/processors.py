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
  (one value per row, e.g. a batch of requests that asked for different temperatures); put it on the
  logits' device and nothing is copied per step.
* ``token_ids`` (the history the penalties look at) has shape ``[T]`` with ``[V]`` logits or ``[B, T]``
  with ``[B, V]`` logits; ``None`` means an empty history. Negative ids (``-1``) are padding and are
  ignored, so ragged histories can be padded on either side. Ids ``>= V`` are ignored too, as in
  transformers: some models have a larger embedding table than output layer.
* Probabilities are computed in float32 when the logits are float16/bfloat16 (a softmax over 100k+
  tokens in half precision loses the small probabilities that truncation rules compare).
* Removed tokens get ``-inf``. A row where *everything* was removed cannot be sampled:
  :func:`sample_from_logits` detects it and raises instead of returning a garbage token.

Each ``apply_*`` checks its arguments once (:func:`processor`), then runs its *kernel*, the body below,
on ``[B, V]`` logits and a ``[B, T]`` history; :class:`LogitsPipeline` calls the kernels (``apply_top_k.kernel``)
with values :class:`~infergen.params.SamplingParams` has checked, so no step re-checks or waits for the
device per token. Order, "off" values and history come from one table, :data:`infergen.params.SETTINGS`.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

from ._validation import as_rows, check_per_row, check_token_ids
from .params import SETTINGS, setting
from .pipeline import LogitsContext, LogitsPipeline

__all__ = ["PIPELINE_ORDER", "LogitsContext", "LogitsPipeline", "processor", "apply_temperature", "apply_top_k",
           "apply_top_p", "apply_min_p", "apply_typical", "apply_epsilon", "apply_eta", "apply_repetition_penalty",
           "apply_frequency_penalty", "apply_no_repeat_ngram", "apply_logit_bias", "check_finite_row", "safe_probs",
           "sample_from_logits"]

#: The order in which :meth:`LogitsPipeline.from_params` runs its steps (as transformers and vLLM), read off
#: :data:`infergen.params.SETTINGS`: first what edits scores using the history, then temperature, then the
#: truncation rules, which therefore see the *tempered* distribution. (llama.cpp applies temperature last:
#: its top-p and min-p see the untempered distribution, so the same parameters keep different tokens.)
PIPELINE_ORDER: tuple[str, ...] = tuple(dict.fromkeys(s.step for s in SETTINGS if s.processor))

_NEG_INF = float("-inf")


# ---- The one door every apply_* goes through, and small helpers --------------------------------------------
def processor(**fields: str):
    """Make a kernel ``fn(logits [B, V], [token_ids [B, T],] *values)`` a public ``apply_*`` function.

    ``fields`` maps each value argument to its :class:`~infergen.params.Setting` (``penalty=
    "repetition_penalty"``). The function checks the logits, the history and each value (errors name the
    argument) once; when every value is "off" it returns a copy. The unchecked kernel is ``fn.kernel``.
    """
    def wrap(kernel):
        signature = inspect.signature(kernel)

        @functools.wraps(kernel)
        def checked(logits, *args, **kwargs):
            rows, squeeze = as_rows(logits)  # [B, V]
            bound = signature.bind(rows, *args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            if "token_ids" in values:
                values["token_ids"] = check_token_ids(values["token_ids"], rows.shape[0], rows.device)
            for arg, field in fields.items():
                values[arg] = setting(field).check(values[arg], arg, vocab=rows.shape[-1])
                check_per_row(arg, values[arg], rows.shape[0])
            if all(setting(field).is_off(values[arg]) for arg, field in fields.items()):
                return logits.clone()
            out = kernel(**values)
            return out.squeeze(0) if squeeze else out

        checked.kernel = kernel
        return checked

    return wrap


def _prob_dtype(logits: torch.Tensor) -> torch.dtype:
    """Dtype for probabilities: float32 for half-precision logits, the logits' own dtype otherwise."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def _row_param(value, logits: torch.Tensor, dtype, transform=None) -> torch.Tensor:
    """A checked scalar or ``[B]`` parameter as a ``[B, 1]`` (or ``[1, 1]``) tensor on the logits' device, by
    tensor ops only. ``transform`` (e.g. ``1 - p``) is one correctly rounded operation, on the Python number
    or on the tensor in ``dtype``: a per-row tensor gives exactly what the same float gives."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to(device=logits.device, dtype=dtype).reshape(-1, 1)
    value = value if transform is None else transform(value)
    return value if isinstance(value, torch.Tensor) else logits.new_full((1, 1), value, dtype=dtype)


def _token_counts(token_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """``counts[b, t]`` = how often token ``t`` occurs in row ``b`` of the history, in one scatter_add.

    Padding (negative ids) and ids ``>= V`` are routed to a spare column ``V`` that is dropped at the end:
    this keeps the whole count a single vectorized op, with no Python loop over tokens.
    """
    ids = torch.where((token_ids >= 0) & (token_ids < vocab), token_ids, vocab)
    counts = token_ids.new_zeros(token_ids.shape[0], vocab + 1)  # long, like the checked history
    return counts.scatter_add_(1, ids, torch.ones_like(ids))[:, :vocab]  # in place on our own tensor


def _entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, probs and entropy ``H = -sum p log p`` (shape ``[B, 1]``) of ``[B, V]`` logits.

    Pitfall: a removed token has ``p = 0`` and ``log p = -inf``, and ``0 * -inf`` is NaN in floating point.
    The limit of ``p log p`` is 0, so the NaNs are dropped with ``nansum``.
    """
    logp = torch.log_softmax(logits.to(_prob_dtype(logits)), dim=-1)
    p = logp.exp()
    return logp, p, -(logp * p).nansum(dim=-1, keepdim=True)


# ---- Temperature and truncation ("warpers") ----------------------------------------------------------------
@processor(temperature="temperature")
def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """Divide the logits by a temperature ``T``: ``softmax(z / T)``.

    ``T < 1`` sharpens the distribution (the gaps between logits grow), ``T > 1`` flattens it, ``T = 1``
    changes nothing. As ``T -> 0`` all the mass goes to the largest logit, so ``T = 0`` is defined as
    *greedy*: every entry except the row's first argmax becomes ``-inf`` (the argmax keeps its logit), and
    sampling from the result always returns the argmax. Dividing by 0 instead would give ``inf``/``NaN``.

    ``temperature`` is a float in ``[0, inf)`` or a ``[B]`` tensor (rows with 0 are greedy, the others are
    divided). Pitfall: a tiny but nonzero ``T`` (say ``1e-30``) overflows the logits to ``inf``; use 0.
    """
    if not isinstance(temperature, torch.Tensor) and temperature > 0:
        return logits / temperature
    t = _row_param(temperature, logits, logits.dtype)
    greedy = t == 0
    scaled = logits / torch.where(greedy, torch.ones_like(t), t)
    is_argmax = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.argmax(-1, keepdim=True), True)
    return scaled.masked_fill(greedy & ~is_argmax, _NEG_INF)


@processor(top_k="top_k")
def apply_top_k(logits: torch.Tensor, top_k) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, remove the rest.

    A token survives when its logit is ``>=`` the k-th largest logit, so ties at the boundary may keep more
    than ``k`` tokens (same as transformers). ``top_k`` is an int ``>= 0`` or a ``[B]`` integer tensor;
    ``0``/``None`` switch it off, and a ``k`` larger than the vocabulary keeps everything.
    Pitfall: a fixed ``k`` ignores the shape of the distribution -- it keeps 50 tokens both when the model
    is sure (one token has 99%) and when 5000 tokens are plausible; top-p and min-p adapt instead.
    """
    vocab = logits.shape[-1]
    k = _row_param(top_k, logits, torch.long).clamp(max=vocab)
    # one k per row: rank the whole row (no host-side k_max); one k: the k largest, [B, k], descending
    ranked = (torch.sort(logits, dim=-1, descending=True) if isinstance(top_k, torch.Tensor)
              else torch.topk(logits, max(min(top_k, vocab), 1), dim=-1)).values
    kth = ranked.gather(-1, (k - 1).clamp(min=0).expand(logits.shape[0], 1))   # the k-th largest logit
    kth = kth.masked_fill(k == 0, _NEG_INF)                                     # k = 0 keeps everything
    return logits.masked_fill(logits < kth, _NEG_INF)


@processor(top_p="top_p")
def apply_top_p(logits: torch.Tensor, top_p) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al., 2019): keep the smallest set of top tokens whose mass reaches ``p``.

    Sort ascending, accumulate probabilities, and remove every token whose cumulative probability is
    ``<= 1 - p``: those tokens together hold at most ``1 - p``. The token that *crosses* the boundary stays,
    so the kept set holds at least ``p``, and the top token always stays. Same as transformers'
    ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``.

    ``top_p`` is in ``(0, 1]`` (``1`` = off) or a ``[B]`` tensor. Pitfall: computing the mask on sorted
    logits and forgetting to scatter it back to vocabulary order removes the wrong tokens.
    """
    dtype = _prob_dtype(logits)
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1)                     # ascending
    cumulative = sorted_logits.to(dtype).softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= _row_param(top_p, logits, dtype, lambda p: 1 - p)
    remove[..., -1] = False                                                    # keep the top token
    remove = remove.scatter(-1, sorted_idx, remove)                            # back to vocab order
    remove &= _row_param(top_p, logits, dtype) < 1                             # rows with p = 1 are off
    return logits.masked_fill(remove, _NEG_INF)


@processor(min_p="min_p")
def apply_min_p(logits: torch.Tensor, min_p) -> torch.Tensor:
    """Min-p (Nguyen et al., 2024): remove tokens with ``p < min_p * p_max``.

    The threshold scales with the top token's probability: a confident model (``p_max = 0.9``) prunes hard,
    an uncertain one (``p_max = 0.05``) keeps many candidates. ``min_p`` is in ``[0, 1]`` (``0`` = off,
    ``1`` keeps only the argmax and its ties) or a ``[B]`` tensor. Run it after temperature, as transformers
    and vLLM do: it then sees the distribution you will actually sample from.
    """
    probs = logits.to(_prob_dtype(logits)).softmax(dim=-1)
    threshold = _row_param(min_p, logits, probs.dtype) * probs.amax(-1, keepdim=True)
    remove = (probs < threshold).scatter(-1, probs.argmax(-1, keepdim=True), False)  # keep >= 1 token
    return logits.masked_fill(remove, _NEG_INF)


@processor(typical_p="typical_p")
def apply_typical(logits: torch.Tensor, typical_p) -> torch.Tensor:
    """Locally typical sampling (Meister et al., 2022): keep the tokens whose surprise is closest to the entropy.

    Each token's surprise is ``-log p``; the expected surprise is the entropy ``H``. Tokens are ranked by
    ``|-log p - H|`` (most "typical" first) and kept until their cumulative mass reaches ``typical_p``.
    Unlike top-p, this can drop the most likely token when it is far *more* likely than typical.
    ``typical_p`` is in ``(0, 1]`` (``1`` = off) or a ``[B]`` tensor. Same as transformers'
    ``TypicalLogitsWarper`` with ``min_tokens_to_keep=1``.
    """
    vocab, dtype = logits.shape[-1], _prob_dtype(logits)
    logp, _, entropy = _entropy(logits)
    sorted_shift, sorted_idx = torch.sort((-logp - entropy).abs(), dim=-1)     # most typical first
    cumulative = logits.gather(-1, sorted_idx).to(dtype).softmax(dim=-1).cumsum(dim=-1)
    mass = _row_param(typical_p, logits, dtype)
    last = (cumulative < mass).sum(dim=-1, keepdim=True).clamp(max=vocab - 1)   # first index reaching the mass
    remove = sorted_shift > sorted_shift.gather(-1, last)
    remove[..., 0] = False                                                      # keep at least one token
    remove = remove.scatter(-1, sorted_idx, remove) & (mass < 1)
    return logits.masked_fill(remove, _NEG_INF)


@processor(epsilon="epsilon")
def apply_epsilon(logits: torch.Tensor, epsilon) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al., 2022): remove tokens with ``p < epsilon``, but never the top token.

    A fixed absolute floor (typical values ``3e-4`` .. ``9e-4``). ``epsilon`` is in ``[0, 1)`` (``0`` = off)
    or a ``[B]`` tensor. If no token reaches ``epsilon`` the top token(s) survive, so a row is never emptied.
    """
    probs = logits.to(_prob_dtype(logits)).softmax(dim=-1)
    remove = (probs < _row_param(epsilon, logits, probs.dtype)) & (logits < logits.amax(dim=-1, keepdim=True))
    return logits.masked_fill(remove, _NEG_INF)


@processor(epsilon="eta")
def apply_eta(logits: torch.Tensor, epsilon) -> torch.Tensor:
    """Eta sampling (Hewitt et al., 2022): an entropy-dependent floor ``eta = min(eps, sqrt(eps) * exp(-H))``.

    Tokens with ``p < eta`` are removed (never the top token). When the model is uncertain (high entropy
    ``H``) the floor drops, so more candidates survive; when it is sure, the floor rises to ``eps``.
    ``epsilon`` is in ``[0, 1)`` (``0`` = off) or a ``[B]`` tensor; typical values ``3e-4`` .. ``2e-3``.
    Same as transformers' ``EtaLogitsWarper``.
    """
    _, probs, entropy = _entropy(logits)
    eps = _row_param(epsilon, logits, probs.dtype)
    eta = torch.minimum(eps, eps.sqrt() * torch.exp(-entropy))
    remove = (probs < eta) & (logits < logits.amax(dim=-1, keepdim=True))
    return logits.masked_fill(remove, _NEG_INF)


# ---- Penalties and biases (they use the token history) -----------------------------------------------------
@processor(penalty="repetition_penalty")
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
    seen = _token_counts(token_ids, logits.shape[-1]) > 0
    theta = _row_param(penalty, logits, logits.dtype)
    return torch.where(seen, torch.where(logits < 0, logits * theta, logits / theta), logits)  # penalize seen


@processor(frequency_penalty="frequency_penalty", presence_penalty="presence_penalty")
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
    dtype = _prob_dtype(logits)
    counts = _token_counts(token_ids, logits.shape[-1]).to(dtype)
    cost = (_row_param(frequency_penalty, logits, dtype) * counts
            + _row_param(presence_penalty, logits, dtype) * (counts > 0).to(dtype))
    return logits - cost.to(logits.dtype)


@processor(ngram_size="no_repeat_ngram_size")
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
    (batch, vocab), n = logits.shape, ngram_size
    if token_ids.shape[1] < n:
        return logits.clone()
    real = token_ids >= 0
    order = torch.sort(real.to(torch.int8), dim=-1, stable=True).indices       # padding first, order kept
    ids, real = token_ids.gather(-1, order), real.gather(-1, order)
    prefix = ids[:, ids.shape[1] - n + 1:]                                     # last n - 1 tokens
    windows = ids.unfold(1, n, 1)                                              # [B, T - n + 1, n]
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1) & real.unfold(1, n, 1).all(-1)
    last = windows[..., -1]
    banned_ids = torch.where(matches & (last < vocab), last, vocab)            # no match -> spare column
    banned = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device).scatter(-1, banned_ids, True)
    return logits.masked_fill(banned[:, :vocab], _NEG_INF)


@processor(logit_bias="logit_bias")
def apply_logit_bias(logits: torch.Tensor, logit_bias) -> torch.Tensor:
    """Add a fixed bias to chosen tokens: ``logit[t] += logit_bias[t]`` (the OpenAI ``logit_bias`` option).

    ``logit_bias`` is a dict ``{token_id: bias}`` with ids in ``[0, V)`` and biases in ``[-100, 100]``, the
    same for every row. ``-100`` effectively bans a token and ``+100`` effectively forces it; small values
    nudge. It runs first, on the raw logits, so the later steps see the biased distribution.
    """
    ids = torch.tensor(list(logit_bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(logit_bias.values()), dtype=logits.dtype, device=logits.device)
    return logits + torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device).index_put((ids,), values)


# ---- From logits to a token --------------------------------------------------------------------------------
def check_finite_row(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Raise ``ValueError`` if some row cannot be sampled: all ``-inf``, or containing NaN or ``+inf``.

    Filters can empty a row (e.g. every token banned), and a bad model step can produce NaN. ``softmax``
    of such a row is NaN everywhere, and ``torch.multinomial`` then fails with an obscure message -- or,
    worse, on some devices returns an arbitrary token. Checking costs one device synchronization.
    Returns ``logits`` unchanged.

    One pass decides: a row's maximum is finite exactly when the row has no NaN (``amax`` propagates
    NaN), no ``+inf``, and at least one finite value. Only a bad row pays for finding out which case.
    """
    rows, _ = as_rows(logits)
    bad = ~torch.isfinite(rows.amax(dim=-1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        reason = ("contain NaN" if rows[i].isnan().any() else "contain +inf (softmax would be NaN)"
                  if (rows[i] == math.inf).any() else "are all -inf (every token was removed)")
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
    rows, squeeze = as_rows(logits)
    probs = safe_probs(rows)
    greedy_rows = torch.isfinite(rows).sum(dim=-1) == 1
    tokens = rows.argmax(dim=-1)
    if not bool(greedy_rows.all()):
        tokens = torch.where(greedy_rows, tokens, torch.multinomial(probs, 1, generator=generator)[:, 0])
    return tokens.squeeze(0) if squeeze else tokens

