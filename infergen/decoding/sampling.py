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

from ..processors import LogitsPipeline, check_finite_row, sample_from_logits
from ..registry import register_decoder
from .base import RowTracker, emit, end_stream, finish, make_generator, prepare


HISTORY_FREE_STEPS = {"logit_bias", "temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta"}


def uses_history(pipeline: LogitsPipeline) -> bool:
    """Does any step look at the token history (penalties, n-gram bans, custom steps)?"""
    return any(name not in HISTORY_FREE_STEPS for name, _ in pipeline.steps)


def decode_steps(model, input_ids, max_new_tokens, pipeline: LogitsPipeline, *, attention_mask=None,
                 eos_token_id=None, pad_token_id=None, generator=None, stopping=None, _result=None):
    """Yield ``(tokens [B], logprobs [B])`` once per generated position.

    Finished rows yield ``pad_token_id`` with log-probability 0. When the loop ends, ``_result``
    (a dict, if given) receives the set-up and the row tracker.
    """
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    model = setup.model
    B = setup.input_ids.shape[0]
    tracker = RowTracker(B, setup, stopping)
    if _result is not None:
        _result.update(setup=setup, tracker=tracker)
    if max_new_tokens == 0:
        return
    prompt_ids = setup.prompt_ids_for_penalties
    history_steps = uses_history(pipeline)
    # greedy with no other processor (e.g. no logit_bias): skip the pipeline, take the argmax
    plain_argmax = pipeline.is_greedy and all(name == "temperature" for name, _ in pipeline.steps)
    needs_history = history_steps or stopping is not None
    history = []  # generated columns, -1 where a row had already finished (ignored by penalties)
    with torch.inference_mode():
        logits = model(setup.input_ids, cache, attention_mask=setup.attention_mask).logits[:, -1].float()
        for step in range(max_new_tokens):
            if plain_argmax:
                check_finite_row(logits)
                tokens = logits.argmax(-1)
            else:
                generated = torch.stack(history, 1) if history else None
                processed = pipeline(logits, prompt_ids=prompt_ids, generated_ids=generated)
                tokens = sample_from_logits(processed, generator=generator)
            logprob = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
            logprob = logprob.masked_fill(tracker.done, 0.0)
            if needs_history:
                history.append(tokens.masked_fill(tracker.done, -1))
            tokens = tracker.mask_finished(tokens)
            all_done = tracker.update(tokens, torch.stack(history, 1) if stopping is not None else None)
            yield tokens, logprob
            if all_done or step == max_new_tokens - 1:
                break
            logits = model(tokens[:, None], cache).logits[:, -1].float()


def generate_autoregressive(model, input_ids, max_new_tokens=100, temperature=1.0, top_k=None, top_p=1.0,
                            eos_token_id=None, *, attention_mask=None, pad_token_id=None, seed=None,
                            generator=None, streamer=None, stopping=None, return_dict=False, **params):
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` [B, T] by sampling.

    ``temperature`` 0 is greedy. ``top_k``, ``top_p`` and every other processor parameter
    (``min_p``, ``typical_p``, ``repetition_penalty``, ``frequency_penalty``, ``presence_penalty``,
    ``no_repeat_ngram_size``, ``logit_bias``, ...) are applied in the order documented in
    :mod:`infergen.processors`. ``seed`` or ``generator`` make sampling reproducible. ``streamer``
    receives each new column of tokens. Returns [B, T + n] token ids, or a
    :class:`~infergen.decoding.base.GenerationOutput` with ``return_dict=True``.
    """
    pipeline = LogitsPipeline.from_params(temperature=temperature, top_k=top_k, top_p=top_p, **params)
    model_device = getattr(model, "device", "cpu")
    gen = make_generator(seed, generator, device=model_device)
    state, tokens, logprobs = {}, [], []
    for tok, lp in decode_steps(model, input_ids, max_new_tokens, pipeline, attention_mask=attention_mask,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=gen,
                                stopping=stopping, _result=state):
        tokens.append(tok)
        logprobs.append(lp)
        emit(streamer, tok)
    end_stream(streamer)
    return finish(state["setup"], tokens, logprobs, state["tracker"], return_dict)


@register_decoder("greedy")
def greedy_search(model, input_ids, max_new_tokens=100, eos_token_id=None, **kwargs):
    """Pick the most probable token at every step (``generate_autoregressive`` at temperature 0)."""
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "seed", "generator"):
        if kwargs.get(name) is not None and not (name == "temperature" and kwargs[name] == 0):
            raise ValueError(f"greedy_search does not sample, so {name}={kwargs[name]!r} has no effect; "
                             "use strategy='sample' (or generate_autoregressive) for sampling parameters")
        kwargs.pop(name, None)
    return generate_autoregressive(model, input_ids, max_new_tokens, temperature=0.0,
                                   eos_token_id=eos_token_id, **kwargs)


@register_decoder("sample")
def sample_with_temperature(model, input_ids, max_new_tokens=100, temperature=1.0, eos_token_id=None,
                            **kwargs):
    """Sample every token from ``softmax(logits / temperature)`` (top-k/top-p etc. also accepted)."""
    return generate_autoregressive(model, input_ids, max_new_tokens, temperature=temperature,
                                   eos_token_id=eos_token_id, **kwargs)
