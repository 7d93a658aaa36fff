"""Conformance checks for a decoder, logits processor or MCTS value function you write yourself.

Every strategy and processor in infergen keeps a few rules (see :mod:`infergen.decoding.base` and
:mod:`infergen.processors`). A new one -- yours, or a student's -- must keep them too, and the bugs that
break them are *silent*: an in-place write that corrupts the caller's logits, a batch row that keeps
talking after its end-of-sequence token, left padding that changes what a prompt generates. Nothing
crashes; the text is just subtly wrong. This module checks the rules mechanically, on inputs built so
that each bug shows::

    from infergen.testing import check_processor, check_decoder, run_checks

    check_processor(apply_top_n_sigma, n_sigma=1.0)      # raises CheckFailed naming every broken rule
    check_processor(apply_dry, history=True, multiplier=0.8)   # called as fn(logits, token_ids, **params)
    check_decoder(my_beam_search, num_beams=3)          # on a tiny random model built here
    check_decoder(my_sampler, deterministic=False)      # stochastic: reproducible with a seed
    check_value_fn(my_reward)                           # value_fn(ctx) -> float in [0, 1] for mcts_decode
    results = run_checks(my_beam_search, "decoder", num_beams=3)   # for graders: list[CheckResult]

Use them from pytest (``check_*`` raise :class:`CheckFailed`, an ``AssertionError``) or from a grader
(:func:`run_checks` never raises for a failing check; it returns one :class:`CheckResult` per rule).

**Processors** are called ``fn(logits, **params)`` (``fn(logits, token_ids, **params)`` with
``history=True``), on ``[V]`` or ``[B, V]`` logits; checks: shapes, rows processed independently, no
in-place mutation, a new tensor returned, dtype and device kept, a valid distribution after softmax
(no NaN, no ``+inf``, at least one finite logit per row), still at least one token on inputs that were
already truncated, determinism.

**Decoders** are called ``fn(model, input_ids, max_new_tokens, attention_mask=..., eos_token_id=...,
pad_token_id=..., return_dict=..., **params)`` (the protocol of :mod:`infergen.decoding.base`); checks:
output shape ``[B, T + n]``, prompt preserved, ``max_new_tokens=0``, a batch of left-padded prompts of
different lengths equal to one prompt at a time (deterministic decoders), EOS per row with padding after,
determinism (with a ``seed`` for stochastic decoders), no mutation of ``input_ids``/``attention_mask``,
consistent ``return_dict`` fields, log-probabilities that are the model's, and the same code running on a
transformers model through the adapter.

**Value functions** (``mcts_decode(value_fn=...)``) are called ``fn(ctx, **params)`` on varied
:class:`~infergen.decoding.mcts.ValueContext` objects; checks: a number in ``[0, 1]``, determinism, no
mutation of the context, a run inside ``mcts_decode``.

When no model is given, the decoder checks build a tiny random Llama (vocabulary 96, EOS 2, padding 0;
the same shape as the test suite's fixtures). Two wrappers make EOS behaviour *controllable* on it:
:class:`ScheduledEOS` forces EOS after a given number of real tokens (so rows of different prompt lengths
finish at different, known steps) or forbids it; :class:`CountingModel` counts forward passes, the
machine-independent measure of a decoder's cost.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch

from infergen import GenerationDefaults, HFModel, LlamaModel, as_model, mcts_decode
from infergen.decoding.base import special_ids
from infergen.decoding.mcts import ValueContext

__all__ = [
    "CheckFailed", "CheckResult", "CountingModel", "ScheduledEOS", "check_decoder", "check_names", "check_processor",
    "check_value_fn", "decoder_check_names", "left_pad", "pad_prompts", "processor_check_names", "run_checks", "run_one",
    "tiny_gpt2", "tiny_model", "value_check_names", "value_contexts",
]

EOS, PAD = 2, 0          # the tiny models' special tokens (as in tests/conftest.py)
TINY_VOCAB = 96
_BIG = 1e4               # logit offset that makes a token (im)possible without creating inf/NaN


class CheckFailed(AssertionError):
    """A conformance check failed; the message says which rule, on what input, and what was seen."""


@dataclass
class CheckResult:
    """The outcome of one check. ``status`` is ``"pass"``, ``"fail"`` (the rule is broken), ``"error"``
    (the function raised), ``"todo"`` (it raised ``NotImplementedError``) or ``"skip"`` (not applicable)."""
    name: str
    status: str
    message: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Did the check pass?"""
        return self.status == "pass"

    def __str__(self) -> str:
        return f"[{self.status}] {self.name}" + (f": {self.message}" if self.message else "")


# --------------------------------------------------------------------------------------------------------
# Tiny models and model wrappers
# --------------------------------------------------------------------------------------------------------
def _tiny_config(**overrides):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


@functools.lru_cache(maxsize=4)
def tiny_model(seed: int = 0):
    """A tiny random Llama as infergen's native model (fp32, CPU; vocabulary 96, EOS 2, padding 0).

    Built from transformers' ``LlamaForCausalLM`` with ``torch.manual_seed(seed)``, the same way as the
    test suite's ``tiny_native`` fixture, so its outputs are reproducible. Cached: do not modify it.
    """
    from transformers import LlamaForCausalLM

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(_tiny_config()).eval()
    finally:
        torch.random.set_rng_state(state)
    return LlamaModel.from_hf(hf, defaults=GenerationDefaults(eos_token_ids=(EOS,), pad_token_id=PAD))


@functools.lru_cache(maxsize=2)
def tiny_gpt2(seed: int = 0):
    """A tiny random GPT-2 behind infergen's transformers adapter (another architecture, another cache)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=TINY_VOCAB, n_positions=256,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
        model = HFModel(GPT2LMHeadModel(cfg).eval(),
                        defaults=GenerationDefaults(eos_token_ids=(EOS,), pad_token_id=PAD))
    finally:
        torch.random.set_rng_state(state)
    return model


class _ModelWrapper:
    """Speaks the model protocol by delegating to the wrapped model (kept private); subclasses change what
    a forward returns or what it records."""

    def __init__(self, inner):
        self._inner = as_model(inner)

    def __getattr__(self, name):  # config, device, dtype, max_context, name, eos_token_id, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def new_cache(self, *args, **kwargs):
        return self._inner.new_cache(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        return self._inner(*args, **kwargs)


def _module_of(model) -> torch.nn.Module:
    """The ``nn.Module`` whose forward actually runs under any stack of wrappers of this module."""
    while isinstance(model, _ModelWrapper):
        model = model._inner
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"CountingModel needs an infergen model (an nn.Module), got {type(model).__name__}")
    return model


class ScheduledEOS(_ModelWrapper):
    """A model whose EOS is predictable: forced right after ``length`` real tokens, forbidden elsewhere.

    After the forward pass, the cache's padding mask tells how many real tokens each row holds up to each
    position; where that count equals ``length``, ``+1e4`` is added to the EOS logit (probability ~1),
    everywhere else ``-1e4`` (probability ~0). A left-padded prompt of ``L`` real tokens therefore emits EOS
    as its new token number ``length - L`` (0-based), whatever the decoder does between -- so rows of
    different lengths finish at different, known steps. ``length=None`` forbids EOS altogether, so every
    row runs to ``max_new_tokens``. Works through reorder/repeat/crop, because it reads the cache's mask.
    """

    def __init__(self, inner, length: int | None, eos_token_id: int = EOS):
        super().__init__(inner)
        self.length, self.eos = length, int(eos_token_id)
        self.defaults = dataclasses.replace(self._inner.defaults, eos_token_ids=(self.eos,))

    def forward(self, input_ids, cache, attention_mask=None, logits="last", hidden=False, **kwargs):
        """Run the wrapped model, then force or forbid EOS as the class docstring says."""
        out = self._inner(input_ids, cache, attention_mask=attention_mask, logits=logits, hidden=hidden, **kwargs)
        t, L = input_ids.shape[1], cache.length
        real = cache.mask[:, :L].long().cumsum(-1)[:, L - t:]          # [B, t] real tokens up to here
        real = real[:, -out.logits.shape[1]:]                          # "last" keeps one position
        if self.length is None:
            boost = torch.full_like(real, -_BIG, dtype=out.logits.dtype)
        else:
            boost = torch.where(real == self.length, _BIG, -_BIG).to(out.logits.dtype)
        new = out.logits.clone()
        new[..., self.eos] += boost.to(new.device)
        out.logits = new
        return out


@dataclass
class _Counts:
    calls: int = 0
    tokens: int = 0


class CountingModel(_ModelWrapper):
    """Counts the forward passes that ran on ``model`` (``calls``) and the token positions they processed
    (``tokens``, B * t summed).

    On a GPU or CPU alike, a decoder's cost is dominated by its forward passes; counting them measures a
    speed-up without the noise of wall-clock timing on a shared machine. The count is taken by a forward
    pre-hook on the model's own module, so every pass that *ran* is counted, whichever object it was called
    through (this wrapper, another wrapper, or the model itself): a decoder cannot run passes uncounted.
    The hook is removed by :meth:`close`, at the end of a ``with`` block, or when the counter is freed;
    two counters open on one model at once both count every pass, so count one run per ``with`` block::

        with CountingModel(model) as counter:
            my_decoder(counter, input_ids, 40)
        counter.calls
    """

    def __init__(self, inner):
        super().__init__(inner)
        counts = self._counts = _Counts()

        def count(module, args, kwargs):
            ids = args[0] if args else kwargs.get("input_ids")
            counts.calls += 1
            counts.tokens += int(ids.numel()) if isinstance(ids, torch.Tensor) else 0

        handle = _module_of(self._inner).register_forward_pre_hook(count, with_kwargs=True)
        self._release = weakref.finalize(self, handle.remove)

    @property
    def calls(self) -> int:
        """Forward passes counted so far."""
        return self._counts.calls

    @property
    def tokens(self) -> int:
        """Token positions processed by the counted passes (B * t summed)."""
        return self._counts.tokens

    def close(self) -> None:
        """Stop counting (removes the hook from the model)."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _special_ids(model) -> tuple[int, int]:
    eos, pad = special_ids(model)
    return (eos[0] if eos else EOS), pad


def pad_prompts(prompts, pad_token_id: int = PAD, device=None):
    """Left-pad 1-D token tensors of different lengths into one batch: ``(input_ids [B, T], attention_mask [B, T])``."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = p
        mask[row, T - len(p):] = 1
    return ids.to(device), mask.to(device)


def left_pad(lengths, *, vocab: int = TINY_VOCAB, pad_token_id: int = PAD, avoid=(0, 1, 2), seed: int = 0,
             device=None):
    """Random prompts of the given real lengths, left-padded: ``(input_ids [B, T], attention_mask [B, T])``.

    Token ids avoid ``avoid`` (padding/BOS/EOS), so a prompt never contains an end-of-sequence token.
    """
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in set(avoid)])
    prompts = [allowed[torch.randint(len(allowed), (n,), generator=g)] for n in lengths]
    return pad_prompts(prompts, pad_token_id, device)


# --------------------------------------------------------------------------------------------------------
# Running checks
# --------------------------------------------------------------------------------------------------------
def run_one(name: str, check: Callable[[], str | None]) -> CheckResult:
    """Run ``check`` as the check ``name``: pass, or fail/error/todo/skip with a message (never raises)."""
    start = time.perf_counter()
    try:
        note = check()
        status, message = ("skip", note[5:]) if isinstance(note, str) and note.startswith("skip:") else \
            ("pass", note or "")
    except NotImplementedError as err:
        status, message = "todo", f"not implemented yet (NotImplementedError{': ' + str(err) if str(err) else ''})"
    except CheckFailed as err:
        status, message = "fail", str(err)
    except AssertionError as err:  # a bare `assert` (no pytest rewriting here): show the line that failed
        status, message = "fail", str(err)
        if not message:
            frames = traceback.extract_tb(err.__traceback__)
            where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
            message = f"assertion failed: {frames[-1].line if frames else ''} ({where})"
    except Exception as err:  # the function under test crashed: report where, briefly
        frames = traceback.extract_tb(err.__traceback__)
        where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
        status, message = "error", f"{type(err).__name__}: {err}{where}"
    return CheckResult(name, status, message, time.perf_counter() - start)


def _fail(message: str):
    raise CheckFailed(message)


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    """Equal shapes, equal ``+-inf`` patterns, NaN where NaN, close elsewhere."""
    if a.shape != b.shape:
        return False
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.equal(torch.isnan(a), torch.isnan(b)) or not torch.equal(torch.isinf(a), torch.isinf(b)):
        return False
    inf = torch.isinf(a)
    if not torch.equal(a[inf], b[inf]):
        return False
    ok = ~inf & ~torch.isnan(a)
    return bool(torch.allclose(a[ok], b[ok], atol=atol, rtol=1e-5))


def _describe_bad_rows(out: torch.Tensor) -> str | None:
    rows = out.detach().float().reshape(-1, out.shape[-1]).cpu()
    for i, row in enumerate(rows):
        if torch.isnan(row).any():
            return f"row {i} contains NaN"
        if (row == math.inf).any():
            return f"row {i} contains +inf (softmax would be NaN)"
        if not torch.isfinite(row).any():
            return f"row {i} has no finite logit: every token was removed, nothing can be sampled"
        total = torch.softmax(row.double(), -1).sum()
        if abs(float(total) - 1) > 1e-6:
            return f"row {i}: softmax sums to {float(total)}"
    return None


# --------------------------------------------------------------------------------------------------------
# The checks: each is a function registered under its kind, named after the rule it checks
# --------------------------------------------------------------------------------------------------------
#: kind -> {rule name: check}, in the order of definition; filled by @_rule as this module is imported.
_CHECKS: dict[str, dict[str, Callable]] = {"processor": {}, "decoder": {}, "value": {}}


def _rule(fn):
    """Register a check. Its name says both: ``processor_no_mutation`` is the rule ``no_mutation`` of the
    kind ``processor``, the name every report shows."""
    kind, name = fn.__name__.split("_", 1)
    _CHECKS[kind][name] = fn
    return fn


def _valid_kind(kind: str) -> str:
    if kind not in _CHECKS:
        raise ValueError(f"kind must be 'processor', 'decoder' or 'value', got {kind!r}")
    return kind


def check_names(kind: str) -> list[str]:
    """The rule names of ``kind`` (``"processor"``, ``"decoder"`` or ``"value"``), in the order they run."""
    return list(_CHECKS[_valid_kind(kind)])


# --------------------------------------------------------------------------------------------------------
# Processor checks
# --------------------------------------------------------------------------------------------------------
_PROC_V, _PROC_B = 64, 4


def _proc_inputs(seed=0, batch=_PROC_B, vocab=_PROC_V, scale=3.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, vocab, generator=g) * scale).to(device=device, dtype=dtype)
    ids = torch.randint(3, 12, (batch, 24), generator=g)   # a small range: the history repeats itself
    ids[batch // 2, :5] = -1                                 # padding, as decoders pass it
    return logits, ids.to(device)


@dataclass
class _Processor:
    """The processor under test: ``fn(logits, **params)``, or ``fn(logits, token_ids, **params)``."""
    fn: Callable
    history: bool
    params: dict

    def __call__(self, logits, ids):
        return self.fn(logits, ids, **self.params) if self.history else self.fn(logits, **self.params)


def _expect_tensor(out, where):
    if not isinstance(out, torch.Tensor):
        _fail(f"{where}: expected a tensor, got {type(out).__name__}")
    return out


@_rule
def processor_shape_1d(p: _Processor):
    logits, ids = _proc_inputs()
    out = _expect_tensor(p(logits[0], ids[0]), "[V] logits")
    if out.shape != logits[0].shape:
        _fail(f"[V] logits of shape {tuple(logits[0].shape)} gave shape {tuple(out.shape)}; a processor "
              "returns logits of the same shape")


@_rule
def processor_shape_2d(p: _Processor):
    for batch in (1, _PROC_B):
        logits, ids = _proc_inputs(batch=batch)
        out = _expect_tensor(p(logits, ids), "[B, V] logits")
        if out.shape != logits.shape:
            _fail(f"[B, V] logits of shape {tuple(logits.shape)} gave shape {tuple(out.shape)}")


@_rule
def processor_rows_independent(p: _Processor):
    logits, ids = _proc_inputs(seed=1)
    batched = p(logits, ids)
    for i in range(logits.shape[0]):
        alone = p(logits[i:i + 1], ids[i:i + 1])
        if not _same(batched[i], alone[0]):
            _fail(f"row {i} processed in a batch differs from the same row processed alone: each row must "
                  "depend only on its own logits (and history); look for a max/mean/std over the whole "
                  "tensor instead of dim=-1, keepdim=True")


@_rule
def processor_no_mutation(p: _Processor):
    logits, ids = _proc_inputs(seed=2)
    logits_before, ids_before = logits.clone(), ids.clone()
    p(logits, ids)
    if not _same(logits, logits_before, atol=0):
        changed = int((~((logits == logits_before) | (torch.isnan(logits) & torch.isnan(logits_before)))).sum())
        _fail(f"the caller's logits were modified in place ({changed} entries changed): work on a copy "
              "(masked_fill, torch.where, or clone() before writing)")
    if p.history and not torch.equal(ids, ids_before):
        _fail("the caller's token_ids were modified in place")


@_rule
def processor_new_tensor(p: _Processor):
    logits, ids = _proc_inputs(seed=3)
    out = p(logits, ids)
    if out.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr():
        _fail("the result shares memory with the input logits (returned the input itself, or a view of it): "
              "return a new tensor, so that the caller may modify the result without surprises")


@_rule
def processor_dtype_device(p: _Processor):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            logits, ids = _proc_inputs(seed=4, dtype=dtype, device=device)
            out = p(logits, ids)
            if out.dtype != dtype or out.device != logits.device:
                _fail(f"{dtype} logits on {logits.device} gave {out.dtype} on {out.device}: keep the input's "
                      "dtype and device (compute in float32 inside if you must, then cast back)")
            bad = _describe_bad_rows(out)
            if bad:
                _fail(f"with {dtype} logits on {device}: {bad}")


@_rule
def processor_valid_distribution(p: _Processor):
    logits, ids = _proc_inputs(seed=5)
    cases = {"random": logits,
             "flat (all logits equal)": torch.zeros_like(logits),
             "peaked (one logit 50, the rest 0)": torch.zeros_like(logits).index_fill(-1, torch.tensor([7]), 50.0),
             "large magnitudes (scale 1e4)": logits * 3e3}
    for what, case in cases.items():
        bad = _describe_bad_rows(p(case, ids))
        if bad:
            _fail(f"on {what} logits: {bad}")


@_rule
def processor_keeps_a_token(p: _Processor):
    logits, ids = _proc_inputs(seed=7)
    cases = {"already truncated (half the vocabulary is -inf)": logits.masked_fill(
                 torch.arange(logits.shape[-1]) % 2 == 1, -math.inf),
             "a single finite logit per row (after temperature 0 or top-k 1)": torch.full_like(
                 logits, -math.inf).index_fill(-1, torch.tensor([5]), 1.0)}
    for what, case in cases.items():
        bad = _describe_bad_rows(p(case, ids))
        if bad:
            _fail(f"on {what} logits: {bad}. A step that can run after truncation must never remove the "
                  "last token of a row; a hard ban must run before temperature/truncation "
                  "(LogitsPipeline.add(..., before='temperature'))")


@_rule
def processor_deterministic(p: _Processor):
    logits, ids = _proc_inputs(seed=6)
    first, second = p(logits, ids), p(logits.clone(), ids.clone())
    if not _same(first, second, atol=0):
        _fail("two calls on the same input gave different results: a processor must be a deterministic "
              "function of its inputs (sampling happens after it)")


def processor_check_names() -> list[str]:
    """The names of the processor checks, in the order they run."""
    return check_names("processor")


# --------------------------------------------------------------------------------------------------------
# Decoder checks
# --------------------------------------------------------------------------------------------------------
def _sequences(out):
    seq = out.sequences if hasattr(out, "sequences") else out
    if not isinstance(seq, torch.Tensor):
        _fail(f"the decoder returned {type(out).__name__}; expected a LongTensor [B, T + n] "
              "(or an object with .sequences when return_dict=True)")
    return seq


class _Decoder:
    """The decoder under test and the inputs every decoder check shares."""
    lengths = (1, 3, 6, 9)       # real prompt lengths (left padding)
    target, n = 12, 10           # ScheduledEOS: EOS as new token 12 - L; row 0 never gets there

    def __init__(self, fn, model, deterministic: bool, params: dict):
        self.fn, self.deterministic, self.given_model = fn, deterministic, model is not None
        self.base = as_model(tiny_model() if model is None else model)
        self.eos, self.pad = _special_ids(self.base)
        self.vocab = self.base.config.vocab_size
        self.seeded = dict(params)
        if not deterministic:
            self.seeded.setdefault("seed", 1234)

    def prompts(self, which=None, seed=0, padding=None):
        """Random left-padded prompts; ``padding``: the id written at padded positions (default: the pad id)."""
        return left_pad(self.lengths if which is None else which, vocab=self.vocab,
                        pad_token_id=self.pad if padding is None else padding,
                        avoid=(0, 1, 2, self.eos, self.pad), seed=seed, device=self.base.device)

    def run(self, m, ids, mask, max_new, return_dict=False, **extra):
        kw = dict(self.seeded)
        kw.update(extra)
        return self.fn(m, ids, max_new, attention_mask=mask, eos_token_id=self.eos, pad_token_id=self.pad,
                       return_dict=return_dict, **kw)



@_rule
def decoder_output_shape(d: _Decoder):
    m = ScheduledEOS(d.base, None, d.eos)
    ids, mask = d.prompts([2, 5])
    seq = _sequences(d.run(m, ids, mask, 6))
    if seq.dtype != torch.long:
        _fail(f"sequences must be token ids (torch.long), got {seq.dtype}")
    if tuple(seq.shape) != (2, ids.shape[1] + 6):
        _fail(f"input_ids {tuple(ids.shape)} with max_new_tokens=6 and no EOS reachable gave "
              f"{tuple(seq.shape)}; expected {(2, ids.shape[1] + 6)} = [B, T + max_new_tokens]")
    if seq.device != ids.device:
        _fail(f"sequences are on {seq.device}, the inputs on {ids.device}")


@_rule
def decoder_max_new_tokens_zero(d: _Decoder):
    ids, mask = d.prompts([2, 5])
    seq = _sequences(d.run(d.base, ids, mask, 0))
    if tuple(seq.shape) != tuple(ids.shape) or not torch.equal(seq.cpu(), ids.cpu()):
        _fail(f"max_new_tokens=0 must return the prompt unchanged {tuple(ids.shape)}, got {tuple(seq.shape)}")


@_rule
def decoder_prompt_preserved(d: _Decoder):
    ids, mask = d.prompts()
    seq = _sequences(d.run(ScheduledEOS(d.base, d.target, d.eos), ids, mask, d.n))
    T = ids.shape[1]
    if seq.shape[0] != ids.shape[0] or seq.shape[1] < T or not torch.equal(seq[:, :T].cpu(), ids.cpu()):
        _fail("sequences[:, :T] must be the prompt exactly as given (left padding included)")


@_rule
def decoder_batch_equals_single(d: _Decoder):
    if not d.deterministic:
        return "skip: a stochastic decoder draws different random numbers in a batch and alone"
    m = ScheduledEOS(d.base, d.target, d.eos)
    ids, mask = d.prompts()
    T = ids.shape[1]
    batched = _sequences(d.run(m, ids, mask, d.n))[:, T:].cpu()
    for i, L in enumerate(d.lengths):
        alone = _sequences(d.run(m, ids[i:i + 1, T - L:], mask[i:i + 1, T - L:], d.n))[0, L:].cpu()
        row = batched[i]
        k = alone.shape[0]
        if row.shape[0] < k or not torch.equal(row[:k], alone) or bool((row[k:] != d.pad).any()):
            _fail(f"prompt {i} (length {L}, left-padded to {T} in the batch) generated {row.tolist()} in the "
                  f"batch but {alone.tolist()} alone: padding must not change a row (attention_mask, "
                  "positions, per-row state)")


@_rule
def decoder_eos_per_row(d: _Decoder):
    m = ScheduledEOS(d.base, d.target, d.eos)
    ids, mask = d.prompts()
    out = d.run(m, ids, mask, d.n)
    seq = _sequences(out)
    new = seq[:, ids.shape[1]:].cpu()
    for i, L in enumerate(d.lengths):
        at = d.target - L                     # the model makes EOS (almost) certain as new token `at`
        row = new[i].tolist()
        if at >= d.n:                         # this row never reaches its EOS: it runs to the end
            if d.eos in row:
                _fail(f"row {i} emitted EOS at new position {row.index(d.eos)}, where the model gives it "
                      "probability ~0")
            if len(row) != d.n:
                _fail(f"row {i} has no EOS, so it must run to max_new_tokens={d.n}; it has {len(row)} new tokens "
                      "(another row's EOS must not stop it)")
            continue
        if len(row) <= at or row[at] != d.eos:
            _fail(f"row {i} (prompt length {L}) should emit EOS as new token {at} (the model makes it "
                  f"certain there) but generated {row}")
        if any(t != d.pad for t in row[at + 1:]):
            _fail(f"row {i} ended with EOS at new position {at} but continued with {row[at + 1:]}: after its "
                  f"EOS a row must be padded with pad_token_id={d.pad} (each row stops on its own)")


@_rule
def decoder_determinism(d: _Decoder):
    ids, mask = d.prompts()
    m = ScheduledEOS(d.base, d.target, d.eos)
    first, second = _sequences(d.run(m, ids, mask, d.n)), _sequences(d.run(m, ids, mask, d.n))
    if not torch.equal(first.cpu(), second.cpu()):
        how = "with the same seed" if not d.deterministic else "for a deterministic decoder"
        _fail(f"two identical calls gave different sequences ({how}): {first.tolist()} vs {second.tolist()}; "
              "draw random numbers only from the generator made from `seed` (make_generator)")


@_rule
def decoder_no_input_mutation(d: _Decoder):
    # The padded positions hold a token that is *not* the pad id, so that a decoder which "normalises" the
    # caller's padding in place (input_ids[~mask] = pad_token_id) changes a value and shows.
    filler = next(t for t in range(3, d.vocab) if t not in (d.eos, d.pad))
    ids, mask = d.prompts(padding=filler)
    arguments = {"input_ids": ids, "attention_mask": mask}
    arguments.update({k: v for k, v in d.seeded.items() if isinstance(v, torch.Tensor)})
    before = {k: v.clone() for k, v in arguments.items()}
    out = d.run(ScheduledEOS(d.base, d.target, d.eos), ids, mask, d.n, return_dict=True)
    for name, tensor in arguments.items():
        if not torch.equal(tensor, before[name]):
            changed = int((tensor != before[name]).sum())
            hint = (f" (its padding positions held {filler}, not pad_token_id={d.pad})" if name == "input_ids" else "")
            _fail(f"{name} was modified in place{hint}: {changed} entries changed; work on a copy (torch.cat, "
                  "masked_fill and clone() make new tensors)")
    seq = _sequences(out)
    for name, tensor in arguments.items():
        if seq.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            _fail(f"the returned sequences share memory with the caller's {name}: return a new tensor")


@_rule
def decoder_return_dict(d: _Decoder):
    ids, mask = d.prompts()
    m = ScheduledEOS(d.base, d.target, d.eos)
    plain = _sequences(d.run(m, ids, mask, d.n))
    out = d.run(m, ids, mask, d.n, return_dict=True)
    for attr in ("sequences", "logprobs", "finish_reason", "prompt_length", "lengths"):
        if not hasattr(out, attr):
            _fail(f"return_dict=True must return a GenerationOutput; the result has no .{attr}")
    B, T = ids.shape
    if not torch.equal(out.sequences.cpu(), plain.cpu()):
        _fail("return_dict=True gave other sequences than return_dict=False for the same call")
    new_n = out.sequences.shape[1] - T
    if out.prompt_length != T:
        _fail(f"prompt_length is {out.prompt_length}, expected T = {T}")
    if tuple(out.logprobs.shape) != (B, new_n):
        _fail(f"logprobs has shape {tuple(out.logprobs.shape)}, expected [B, n] = {(B, new_n)}")
    if len(out.finish_reason) != B or not set(out.finish_reason) <= {"eos", "length", "stop"}:
        _fail(f"finish_reason must list 'eos', 'length' or 'stop' per row, got {out.finish_reason}")
    if out.lengths is None or len(out.lengths) != B:
        _fail(f"lengths must give the number of real new tokens of each row, got {out.lengths}")
    new = out.sequences[:, T:].cpu()
    lp = out.logprobs.detach().float().cpu()
    for i in range(B):
        row = new[i].tolist()
        if d.eos in row:
            want_len, want_reason = row.index(d.eos) + 1, "eos"
        else:
            want_len, want_reason = len(row), out.finish_reason[i]
        if out.finish_reason[i] != want_reason or (want_reason == "eos") != (out.finish_reason[i] == "eos"):
            _fail(f"row {i}: finish_reason is {out.finish_reason[i]!r} but its tokens are {row}")
        if d.eos not in row and out.finish_reason[i] == "eos":
            _fail(f"row {i}: finish_reason 'eos' but no EOS token among {row}")
        if out.lengths[i] != want_len:
            _fail(f"row {i}: lengths[{i}] = {out.lengths[i]} but the row has {want_len} real new tokens "
                  f"(its EOS included): {row}")
        real = lp[i, :want_len]
        if not torch.isfinite(real).all() or bool((real > 1e-4).any()):
            _fail(f"row {i}: log-probabilities of real tokens must be finite and <= 0, got {real.tolist()}")
        if bool((lp[i, want_len:] != 0).any()):
            _fail(f"row {i}: log-probabilities after the row ended must be 0, got {lp[i, want_len:].tolist()}")


@_rule
def decoder_logprobs_match_model(d: _Decoder):
    ids, mask = d.prompts()
    out = d.run(d.base, ids, mask, d.n, return_dict=True)
    if not hasattr(out, "logprobs"):
        _fail("return_dict=True must return a GenerationOutput with .logprobs")
    seq, T = out.sequences, ids.shape[1]
    full_mask = torch.cat([mask.to(seq.device).long(), torch.ones_like(seq[:, T:])], 1)
    with torch.inference_mode():
        cache = d.base.new_cache(seq.shape[0], seq.shape[1])
        logits = d.base(seq, cache, attention_mask=full_mask, logits="all").logits.float()
    want = torch.log_softmax(logits[:, T - 1:-1], -1).gather(-1, seq[:, T:, None]).squeeze(-1).cpu()
    got = out.logprobs.detach().float().cpu()
    lengths_ = out.lengths or [seq.shape[1] - T] * seq.shape[0]
    for i, k in enumerate(lengths_):
        if k and not torch.allclose(got[i, :k], want[i, :k], atol=1e-3, rtol=1e-3):
            _fail(f"row {i}: logprobs {got[i, :k].tolist()} are not log p(token | prefix) under the model "
                  f"{want[i, :k].tolist()} (before any processor)")


@_rule
def decoder_works_on_hf_adapter(d: _Decoder):
    if d.given_model:
        return "skip: a model was given"
    m = ScheduledEOS(tiny_gpt2(), d.target, EOS)
    ids, mask = left_pad(d.lengths, seed=3)
    seq = _sequences(d.fn(m, ids, d.n, attention_mask=mask, eos_token_id=EOS, pad_token_id=PAD,
                          return_dict=False, **d.seeded))
    new = seq[:, ids.shape[1]:]
    if not torch.equal(seq[:, :ids.shape[1]], ids) or new.shape[1] != d.n:
        _fail("on a transformers GPT-2 behind the adapter, the decoder did not keep the prompt or produce "
              f"[B, T + {d.n}]: use only the model protocol (new_cache, forward, cache.reorder/crop/...)")
    for i, L in enumerate(d.lengths):
        at = d.target - L
        if at < d.n and (new[i, at] != EOS or bool((new[i, at + 1:] != PAD).any())):
            _fail(f"on the transformers adapter, row {i} did not end at its EOS (new token {at}) with padding "
                  f"after: {new[i].tolist()}")


def decoder_check_names() -> list[str]:
    """The names of the decoder checks, in the order they run."""
    return check_names("decoder")


# --------------------------------------------------------------------------------------------------------
# MCTS value-function checks
# --------------------------------------------------------------------------------------------------------
def value_contexts(tokenizer=None, vocab: int = TINY_VOCAB, seed: int = 0) -> list:
    """A varied set of :class:`~infergen.decoding.mcts.ValueContext` objects, as ``mcts_decode`` builds them:
    an empty continuation, committed tokens only, a path, a path ending in EOS, a path with a rollout."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for committed, path, rollout, eos in [(0, 0, 0, False), (3, 0, 0, False), (0, 4, 0, False),
                                          (2, 3, 0, True), (1, 2, 5, False), (6, 10, 4, False)]:
        prompt = torch.randint(3, vocab, (5,), generator=g)
        new = torch.randint(3, vocab, (committed + path + rollout,), generator=g)
        if eos and path:
            new[committed + path - 1] = EOS
        lps = -torch.rand(path + rollout, generator=g) * 4
        out.append(ValueContext(token_ids=torch.cat([prompt, new]), prompt_length=5, num_committed=committed,
                                path_length=path, rollout_length=rollout, logprobs=lps,
                                committed_logprobs=-torch.rand(committed, generator=g) * 4, ends_with_eos=eos,
                                tokenizer=tokenizer, generator=None))
    return out


@dataclass
class _Value:
    """The value function under test, ``fn(ctx, **params)``; ``tokenizer`` fills ``ctx.tokenizer``."""
    fn: Callable
    tokenizer: object
    params: dict

    def __call__(self, ctx):
        return self.fn(ctx, **self.params)


@_rule
def value_number_in_range(v: _Value):
    for i, ctx in enumerate(value_contexts(v.tokenizer)):
        value = v(ctx)
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
                isinstance(value, torch.Tensor) and value.numel() == 1):
            _fail(f"context {i}: value_fn returned {value!r} ({type(value).__name__}); it must return a number")
        value = float(value)
        if not 0.0 <= value <= 1.0:  # NaN fails too
            _fail(f"context {i} (path {ctx.path_length}, rollout {ctx.rollout_length}): value {value} is not in "
                  "[0, 1]; MCTS averages values and compares them with its priors, so keep them in [0, 1]")


@_rule
def value_deterministic(v: _Value):
    for i, ctx in enumerate(value_contexts(v.tokenizer, seed=1)):
        if float(v(ctx)) != float(v(ctx)):
            _fail(f"context {i}: two calls gave different values (a value function must be deterministic "
                  "unless it draws from ctx.generator)")


@_rule
def value_no_mutation(v: _Value):
    for i, ctx in enumerate(value_contexts(v.tokenizer, seed=2)):
        ids, lps = ctx.token_ids.clone(), ctx.logprobs.clone()
        v(ctx)
        if not torch.equal(ids, ctx.token_ids) or not torch.equal(lps, ctx.logprobs):
            _fail(f"context {i}: value_fn modified ctx.token_ids or ctx.logprobs in place; the search "
                  "reuses these tensors")


@_rule
def value_works_in_mcts(v: _Value):
    ids, _ = left_pad([4], seed=5)
    out = mcts_decode(tiny_model(), ids, 3, num_simulations=4, top_k=4, seed=0, tokenizer=v.tokenizer,
                      value_fn=v, return_dict=True)
    if tuple(out.sequences.shape) != (1, ids.shape[1] + 3):
        _fail(f"mcts_decode with this value_fn returned shape {tuple(out.sequences.shape)}")


def value_check_names() -> list[str]:
    """The names of the value-function checks, in the order they run."""
    return check_names("value")


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------
def run_checks(fn: Callable, kind: str = "processor", *, model=None, history: bool = False,
               deterministic: bool = True, tokenizer=None, only=None, **params) -> list[CheckResult]:
    """Run every check of ``kind`` (``"processor"``, ``"decoder"`` or ``"value"``) on ``fn``; never raises
    for a failing check.

    ``params`` are passed to every call of ``fn``. Processors: ``history=True`` calls
    ``fn(logits, token_ids, **params)``. Decoders: ``model`` (default: a tiny random Llama),
    ``deterministic=False`` for stochastic decoders (then a ``seed`` is passed and the batch-vs-single
    check is skipped). Value functions (MCTS, ``fn(ctx, **params) -> float``): ``tokenizer`` fills
    ``ctx.tokenizer``. ``only`` restricts to some check names. Returns one :class:`CheckResult` per check.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    checks = _CHECKS[_valid_kind(kind)]
    if only is not None:
        unknown = set(only) - set(checks)
        if unknown:
            raise ValueError(f"unknown check names {sorted(unknown)}; valid: {list(checks)}")
        checks = {k: v for k, v in checks.items() if k in set(only)}
    with torch.inference_mode():
        subject = {"processor": lambda: _Processor(fn, history, params),
                   "decoder": lambda: _Decoder(fn, model, deterministic, params),
                   "value": lambda: _Value(fn, tokenizer, params)}[kind]()
        return [run_one(name, functools.partial(check, subject)) for name, check in checks.items()]


def _raise_failures(what: str, results: list[CheckResult]) -> list[CheckResult]:
    bad = [r for r in results if r.status in ("fail", "error", "todo")]
    if bad:
        lines = "\n".join(f"  - {r.name} [{r.status}]: {r.message}" for r in bad)
        raise CheckFailed(f"{what} failed {len(bad)} of {len(results)} conformance checks:\n{lines}")
    return results


def check_processor(fn: Callable, *, history: bool = False, only=None, **params) -> list[CheckResult]:
    """Check that ``fn`` behaves as an infergen logits processor; raise :class:`CheckFailed` listing every
    broken rule, else return the results. See the module docstring for the rules."""
    return _raise_failures(f"processor {getattr(fn, '__name__', fn)!r}",
                           run_checks(fn, "processor", history=history, only=only, **params))


def check_value_fn(value_fn: Callable, *, tokenizer=None, only=None, **params) -> list[CheckResult]:
    """Check an MCTS value function ``value_fn(ctx) -> float in [0, 1]`` (see :mod:`infergen.decoding.mcts`):
    a number in range on varied contexts, deterministic, no mutation of ``ctx``, usable by ``mcts_decode``."""
    return _raise_failures(f"value function {getattr(value_fn, '__name__', value_fn)!r}",
                           run_checks(value_fn, "value", tokenizer=tokenizer, only=only, **params))


def check_decoder(fn: Callable, model=None, *, deterministic: bool = True, only=None, **params) -> list[CheckResult]:
    """Check that ``fn`` follows infergen's decoder protocol; raise :class:`CheckFailed` listing every
    broken rule, else return the results. ``deterministic=False`` for sampling decoders (a ``seed`` is passed)."""
    return _raise_failures(f"decoder {getattr(fn, '__name__', fn)!r}",
                           run_checks(fn, "decoder", model=model, deterministic=deterministic, only=only, **params))
