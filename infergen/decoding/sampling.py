"""Autoregressive generation: greedy search and sampling, with a KV cache.

The loop every language model runs:

    logits = model(prompt)                     # prefill: the whole prompt at once, fills the cache
    repeat max_new_tokens times:
        p = softmax(process(logits))           # penalties, temperature, top-k, top-p, ...
        x = argmax(p)  or  x ~ p               # greedy, or a sample
        logits = model(x)                      # decode: one token, reusing the cached keys/values

Four details separate a correct implementation from the textbook sketch (see the errata):

* **The cache.** Without it each step re-runs the whole sequence and the cost grows quadratically.
* **Temperature 0** is greedy decoding, not a division by zero.
* **Batches**: prompts are left-padded; each row stops at its *own* end-of-sequence token and is
  padded afterwards, instead of running on until every row is finished.
* **No autograd**: inference runs under ``torch.no_grad()`` (here ``torch.inference_mode``).

:func:`decode_steps` is the loop as a Python generator (it yields one column of tokens per step, which
is what streaming needs); :func:`generate_autoregressive` runs it to the end.
"""
from __future__ import annotations

import torch

from ..params import SamplingParams
from ..processors import LogitsPipeline
from ..registry import register_decoder
from .base import check_stop, make_generator, prepare
from .steps import Rows, Sampler, decode_n_tokens, last_logits, prefill


def start(model, input_ids, max_new_tokens, params: SamplingParams, pipeline: LogitsPipeline | None = None,
          generator=None, *, attention_mask=None, eos_token_id=None, pad_token_id=None, stopping=None,
          streamer=None, constraint=None):
    """Set up a generation under ``params`` (or ``pipeline``): checks, sampler, cache, rows and the prefill.
    Returns ``(rows, steps)``: ``steps`` is the :func:`decode_n_tokens` loop to run, empty when there is
    nothing to generate (``max_new_tokens`` 0, or every row's constraint complete before any token)."""
    check_stop(params, stopping)
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    sampler = Sampler(params, pipeline, make_generator(params.seed, generator, device=setup.model.device))
    rows = Rows(setup, stopping=stopping, streamer=streamer, constraint=constraint)
    if not setup.max_new_tokens or bool(rows.done.all()):  # nothing to generate: no forward pass
        return rows, iter(())
    with torch.inference_mode():
        logits = last_logits(prefill(setup.model, setup.input_ids, cache, setup.attention_mask))
    return rows, decode_n_tokens(setup.model, cache, logits, setup.max_new_tokens, sampler, rows)


def decode_steps(model, input_ids, max_new_tokens, params: SamplingParams | LogitsPipeline | None = None,
                 generator=None, **kwargs):
    """Yield ``(tokens [B], logprobs [B])`` once per generated position (what streaming needs).

    ``params`` says how tokens are chosen: a :class:`~infergen.params.SamplingParams`, or a
    :class:`~infergen.LogitsPipeline` of your own (e.g. with a registered processor; its
    temperature decides greedy vs sampling). ``kwargs`` are those of :func:`generate_autoregressive`
    (``attention_mask``, ``eos_token_id``, ...). Finished rows yield ``pad_token_id`` with log-probability 0.
    """
    pipeline = params if isinstance(params, LogitsPipeline) else None
    settings = params if isinstance(params, SamplingParams) else SamplingParams()
    yield from start(model, input_ids, max_new_tokens, settings, pipeline, generator, **kwargs)[1]


def generate_autoregressive(model, input_ids, max_new_tokens=100, temperature=None, top_k=None, top_p=None,
                            eos_token_id=None, *, attention_mask=None, pad_token_id=None, generator=None,
                            streamer=None, stopping=None, constraint=None, return_dict=False,
                            params: SamplingParams | None = None, **settings):
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` [B, T] by sampling.

    ``temperature`` (default 1; 0 is greedy), ``top_k``, ``top_p`` and every other setting of
    :class:`~infergen.params.SamplingParams` (``min_p``, ``repetition_penalty``, ``frequency_penalty``,
    ``logit_bias``, ``seed``, ...) may be given as keywords or as one ``params`` object (keywords win);
    processors run in the order documented in :mod:`infergen.processors`. ``seed`` or ``generator`` (one
    ``torch.Generator``, or one per row) make sampling reproducible. ``streamer`` receives each new column
    of tokens. ``constraint`` (from :func:`infergen.constraints.make_constraint`, or a list with one per
    row) restricts every row to text its constraint accepts; it is applied to the logits first, before
    every processor. Returns [B, T + n] token ids, or a :class:`~infergen.decoding.base.GenerationOutput`
    with ``return_dict=True``. Strategy ``"sample"`` runs it through :func:`sample_with_temperature`.
    """
    params = SamplingParams.resolve(params, temperature=temperature, top_k=top_k, top_p=top_p, **settings)
    rows, steps = start(model, input_ids, max_new_tokens, params, generator=generator,
                        attention_mask=attention_mask, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                        stopping=stopping, streamer=streamer, constraint=constraint)
    for _ in steps:
        pass
    return rows.output(return_dict)


@register_decoder("greedy")
def greedy_search(model, input_ids, max_new_tokens=100, eos_token_id=None, *, params: SamplingParams | None = None,
                  constraint=None, **kwargs):
    """Pick the most probable token at every step (``generate_autoregressive`` at temperature 0).

    Settings that edit scores (``logit_bias``, penalties, n-gram bans) apply; settings that only matter
    when sampling (``top_p=0.9``, ``seed``, ...) are refused, since they would have no effect.
    ``constraint`` and the other keywords are :func:`generate_autoregressive`'s.
    """
    params, rest = SamplingParams.split(kwargs, params)
    params.require_deterministic("greedy_search")
    return generate_autoregressive(model, input_ids, max_new_tokens, eos_token_id=eos_token_id,
                                   params=params.replace(temperature=0.0), constraint=constraint, **rest)


@register_decoder("sample")
def sample_with_temperature(model, input_ids, max_new_tokens=100, temperature=None, eos_token_id=None,
                            constraint=None, **kwargs):
    """Sample every token from ``softmax(logits / temperature)`` (default temperature 1; top-k/top-p etc.
    also accepted): :func:`generate_autoregressive` with ``eos_token_id`` as the fifth argument.
    Registered as strategy ``"sample"``."""
    return generate_autoregressive(model, input_ids, max_new_tokens, temperature=temperature,
                                   eos_token_id=eos_token_id, constraint=constraint, **kwargs)
