"""The front door for people who want text: ``infergen.generate`` and ``infergen.stream``.

The decoders work on token ids; this module does the text around them: it tokenizes one prompt or
a batch (left padding), optionally wraps them in the model's chat template, calls the strategy by
name, turns stop strings into a stopping criterion, and decodes the result::

    result = infergen.generate(model, tokenizer, "The future of AI is", strategy="sample",
                               temperature=0.8, top_p=0.95, seed=0)
    result.text, result.token_ids, result.logprobs, result.finish_reason

``infergen.stream(...)`` yields the text as it is produced (the decoder runs in a background
thread and hands each new token over through a queue).

Constrained output: ``regex=``, ``json_schema=`` (a dict or a pydantic model class), ``grammar=`` (Lark
style) or ``choices=`` (a list of strings) compile a constraint with
:func:`infergen.constraints.make_constraint` and hand it to the decoder as ``constraint=``; the
output then matches the pattern (``finish_reason == "constraint"`` once nothing but the end can
follow). A strategy supports it when its decoder takes ``constraint=`` (:func:`check_constrained`);
:data:`UNCONSTRAINED_STRATEGIES` says why the other built-in ones do not.
"""
from __future__ import annotations

import copy
import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


from .params import SamplingParams
from .decoding.steps import StopStrings
from .registry import DECODERS, get_decoder

if TYPE_CHECKING:
    from .constraints.base import Constraint

#: why the built-in strategies whose decoders take no ``constraint=`` refuse one
UNCONSTRAINED_STRATEGIES = {
    "contrastive": "contrastive search ranks the model's top-k tokens by a degeneration penalty computed from "
                   "each candidate's hidden state; it has no constraint hook (masking before its top-k would be "
                   "the way to add one)",
    "mcts": "MCTS would need a forked constraint state in every tree node, for its priors, expansions and "
            "rollouts alike; it is not implemented",
    "speculative": "speculative decoding verifies several drafted tokens at once: each drafted position needs "
                   "the constraint advanced along the draft (and rolled back on rejection), and the acceptance "
                   "test must compare the masked distributions of draft and target; it is not implemented",
}


@dataclass
class GenerationResult:
    """One prompt's generation: the text, the new token ids, their log-probabilities under the
    model, and why it finished (``"eos"``, ``"length"``, ``"stop"``, or under a constraint
    ``"constraint"``: complete, ``"closed"``: complete after budget closing steered it to fit in
    ``max_new_tokens``, ``"budget"``: no completion fitted, or ``"no_valid_token"``: nothing was allowed)."""
    prompt: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    strategy: str
    seconds: float = 0.0
    score: float | None = None
    info: dict = field(default_factory=dict, repr=False)

    @property
    def num_tokens(self) -> int:
        """How many tokens were generated."""
        return len(self.token_ids)

    @property
    def mean_logprob(self) -> float:
        """The average log-probability of the generated tokens (NaN if there are none)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("nan")


def _stopper(tokenizer, stop, params: dict) -> StopStrings:
    """The stop strings of a call: ``stop=`` (given, even empty: checked by StopStrings), else those of
    ``params=`` (a SamplingParams), else none."""
    if stop is None and isinstance(params.get("params"), SamplingParams):
        stop = params["params"].stop
    return StopStrings(tokenizer, () if stop is None else stop)


def encode(tokenizer, prompts, chat: bool = False, device=None):
    """Tokenize prompts with left padding; returns (input_ids, attention_mask) on ``device``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompt must be a non-empty string or a non-empty list of strings")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"each prompt must be a string, got {type(p).__name__}")
        if not p.strip() and not chat:
            raise ValueError(f"prompt is empty ({p!r}): give at least one token of text")
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    if tokenizer.pad_token is None:
        tokenizer = copy.deepcopy(tokenizer)  # the caller's tokenizer is left as it is
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=not chat)
    if enc.input_ids.shape[1] == 0:
        raise ValueError("prompt is empty after tokenization: give at least one token of text")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def _per_row(kind: str, value, n: int) -> list:
    """A constraint argument as one value per prompt: the same for all, or a list with one per prompt."""
    per_row = isinstance(value, (list, tuple)) and (
        kind != "choices" or (len(value) > 0 and all(isinstance(v, (list, tuple)) or v is None for v in value)))
    if not per_row:
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{kind} holds {len(value)} entries for {n} prompts: give one {kind} for all prompts "
                         "or one per prompt")
    return list(value)


def check_constrained(strategy: str, what: str) -> None:
    """Refuse a constraint (given as ``what``) for a strategy whose decoder has no ``constraint=`` parameter
    (its signature is the one that decides), saying why and which registered strategies take one."""
    if "constraint" not in inspect.signature(get_decoder(strategy)).parameters:
        why = UNCONSTRAINED_STRATEGIES.get(strategy, "its decoder does not take a constraint= argument")
        able = [name for name, fn in DECODERS.items() if "constraint" in inspect.signature(fn).parameters]
        raise ValueError(f"strategy={strategy!r} does not support {what}: {why}. Strategies that do: "
                         f"{', '.join(able)}")


def build_constraint(model, tokenizer, n_prompts: int, strategy: str, backend: str | None = None,
                     eos_token_id=None, **kinds):
    """The ``constraint=`` for the decoder from :func:`generate`'s ``regex`` / ``json_schema`` / ``grammar`` /
    ``choices`` (at most one kind; each the same for every prompt or a list with one per prompt, ``None``
    entries leaving a row free). Returns None when none is given. The EOS ids the constraint allows in
    accepting states are the decoder's: ``eos_token_id`` or the model's defaults."""
    from .constraints import DEFAULT_BACKEND, make_constraint
    from .decoding.base import special_ids
    from .models.hf import as_model

    given = {k: v for k, v in kinds.items() if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"give at most one of regex=, json_schema=, grammar=, choices=; got {' and '.join(given)}")
    (kind, value), = given.items()
    check_constrained(strategy, f"{kind}=")
    values, eos = _per_row(kind, value, n_prompts), special_ids(as_model(model), eos_token_id)[0]
    unique = {id(v): v for v in values if v is not None}  # the same object for several prompts: compiled once
    compiled = {key: make_constraint(tokenizer, **{kind: v}, backend=backend or DEFAULT_BACKEND,
                                     eos_token_id=eos) for key, v in unique.items()}
    out: list[Constraint | None] = [None if v is None else compiled[id(v)] for v in values]
    return out[0] if all(c is out[0] for c in out) else out


def generate(model, tokenizer, prompt_or_prompts, strategy: str = "greedy", max_new_tokens: int = 64,
             stop=None, chat: bool = False, *, regex=None, json_schema=None, grammar=None, choices=None,
             constraint_backend: str | None = None, **params):
    """Generate text with the named ``strategy`` (``"greedy"``, ``"sample"``, ``"beam"``,
    ``"contrastive"``, ``"mcts"``, ``"speculative"``, or any registered name).

    ``params`` go to the decoder (e.g. ``temperature``, ``top_p``, ``seed``, ``num_beams``).
    ``stop``: a string or list of strings that end a row (the text is cut before it).
    ``chat=True`` wraps each prompt in the tokenizer's chat template (for instruct models).
    Returns a :class:`GenerationResult` for one prompt, a list of them for a list of prompts (with
    ``num_return_sequences=n``, n results per prompt, in prompt order).

    Constrained output (at most one of these; each the same for every prompt, or a list with one per
    prompt, ``None`` leaving that prompt free): ``regex`` (the whole output fullmatches it),
    ``json_schema`` (a dict, a JSON string or a pydantic model class: the output is JSON valid under it),
    ``grammar`` (a Lark-style grammar), ``choices`` (a list of strings: the output is one of them).
    ``constraint_backend``: ``"llguidance"`` (default), ``"teaching"``, or a compiler class such as
    :class:`infergen.interop.outlines.OutlinesCompiler` (see :func:`~infergen.constraints.make_constraint`). A compiled
    constraint (:func:`infergen.constraints.make_constraint`) can also be passed as ``constraint=``.
    The mask is applied to the raw logits first, before every processor (penalties, temperature,
    top-k/top-p), so those choose among the allowed tokens only. Strategies: greedy, sample, beam and
    diverse_beam (every decoder with a ``constraint=`` parameter); contrastive, mcts and speculative refuse
    (see :data:`UNCONSTRAINED_STRATEGIES`).
    """
    if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise TypeError(f"tokenizer must be a transformers tokenizer (the second value of load_model), got "
                        f"{type(tokenizer).__name__}")
    decoder = get_decoder(strategy)
    stopper = _stopper(tokenizer, stop, params)
    if isinstance(params.get("params"), SamplingParams):  # stop strings are recognised here, on the text
        params["params"] = params["params"].replace(stop=())
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    input_ids, mask = encode(tokenizer, prompts, chat=chat, device=getattr(model, "device", None))
    kinds = dict(regex=regex, json_schema=json_schema, grammar=grammar, choices=choices)
    if any(v is not None for v in kinds.values()) and params.get("constraint") is not None:
        raise ValueError("give either constraint= (compiled) or one of regex=, json_schema=, grammar=, choices=, "
                         "not both")
    if params.get("constraint") is not None:
        check_constrained(strategy, "constraint=")
    built = build_constraint(model, tokenizer, len(prompts), strategy, constraint_backend,
                             params.get("eos_token_id"), **kinds)
    if built is not None:
        params["constraint"] = built
    if stopper.stops:
        params["stopping"] = stopper
    if "tokenizer" in inspect.signature(decoder).parameters:
        params.setdefault("tokenizer", tokenizer)  # e.g. MCTS value functions that read text
    start = time.perf_counter()
    out = decoder(model, input_ids, max_new_tokens, attention_mask=mask, return_dict=True, **params)
    seconds = time.perf_counter() - start
    results = []
    per_prompt = out.sequences.shape[0] // len(prompts)  # > 1 with num_return_sequences
    for i in range(out.sequences.shape[0]):
        n = out.lengths[i] if out.lengths is not None else out.new_tokens.shape[1]
        ids, lps = out.new_tokens[i, :n].tolist(), out.logprobs[i, :n].tolist()
        results.append(GenerationResult(prompt=prompts[i // per_prompt], token_ids=ids, logprobs=lps,
                                        text=stopper.cut(tokenizer.decode(ids, skip_special_tokens=True)),
                                        finish_reason=out.finish_reason[i], strategy=strategy,
                                        score=None if out.scores is None else float(out.scores[i]),
                                        seconds=seconds, info=out.info))
    return results[0] if single and per_prompt == 1 else results


def stream(model, tokenizer, prompt: str, strategy: str = "sample", max_new_tokens: int = 64, **params):
    """Yield the generated text piece by piece as the decoder produces it (one prompt).

    The pieces joined are exactly ``generate(...).text``: text is held back while it could still be cut
    by a stop string (given as ``stop=`` or inside ``params=``) or ends in an incomplete character, and
    the rest follows once the decoder is done. With ``num_return_sequences > 1`` the best sequence is
    streamed (``generate(...)[0]``). Closing the iterator (or dropping it) stops the decoder at its next
    token: the decoding thread ends before ``close()`` returns.
    """
    if not isinstance(prompt, str):
        raise TypeError("stream takes one prompt string")
    pieces: queue.Queue = queue.Queue()
    closed = threading.Event()
    stopper = _stopper(tokenizer, params.get("stop"), params)

    def on_tokens(tokens):
        if closed.is_set():
            raise GeneratorExit("the stream was closed")  # unwinds the decoder in its thread
        pieces.put(int(tokens.reshape(-1)[0]))

    def run():
        try:
            out = generate(model, tokenizer, prompt, strategy=strategy, max_new_tokens=max_new_tokens,
                           streamer=on_tokens, **params)
            pieces.put(out[0] if isinstance(out, list) else out)
        except BaseException as err:  # hand the error to the consumer
            pieces.put(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    ids, emitted = list[int](), ""
    try:
        while isinstance(item := pieces.get(), int):
            ids.append(item)
            # held back: what a stop string may still cut, and an incomplete character (U+FFFD)
            text = stopper.safe_prefix(tokenizer.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted):]
                emitted = text
    finally:
        closed.set()
        worker.join()
    if isinstance(item, BaseException):
        raise item
    if item.text.startswith(emitted) and len(item.text) > len(emitted):
        yield item.text[len(emitted):]
