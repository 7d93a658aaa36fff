"""The same settings in the peers' terms: transformers' ``GenerationConfig`` and vLLM's ``SamplingParams``.

:func:`to_generation_config` turns infergen's sampling settings into a transformers ``GenerationConfig``
(:func:`from_generation_config` is its inverse) and :func:`to_vllm_sampling_params` into the fields of
vLLM's ``SamplingParams``. The name tables :data:`TRANSFORMERS_NAMES` and :data:`VLLM_NAMES` say which
field each setting becomes. Settings a peer does not have raise ``ValueError`` instead of being dropped
silently (transformers has no frequency/presence penalty; vLLM has no typical/epsilon/eta sampling and
runs beam search through a separate entry point).
"""
from __future__ import annotations

import dataclasses

import torch

from .._validation import check_number
from ..params import SETTINGS, SamplingParams, setting

__all__ = ["CALL_SETTINGS", "TRANSFORMERS_CALL_FIELDS", "TRANSFORMERS_NAMES", "TRANSFORMERS_UNSET", "VLLM_NAMES", "from_generation_config", "to_generation_config",
           "to_vllm_sampling_params"]

#: Generation settings that are not sampling settings (they belong to the call, not to SamplingParams), each
#: with its valid values as ``check_number`` takes them (``None``: any).
CALL_SETTINGS: dict[str, dict | None] = {
    "max_new_tokens": dict(low=0, integer=True), "min_new_tokens": dict(low=0, integer=True),
    "eos_token_id": dict(low=0, integer=True), "pad_token_id": dict(low=0, integer=True),
    "num_beams": dict(low=1, integer=True), "length_penalty": dict(), "early_stopping": None,
    "num_return_sequences": dict(low=1, integer=True)}
_SAMPLING_NAMES = tuple(s.name for s in SETTINGS)

#: infergen's sampling setting -> transformers' ``GenerationConfig`` field (None: transformers has none).
TRANSFORMERS_NAMES = {"logit_bias": "sequence_bias", "repetition_penalty": "repetition_penalty",
                      "frequency_penalty": None, "presence_penalty": None,
                      "no_repeat_ngram_size": "no_repeat_ngram_size", "temperature": "temperature",
                      "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
                      "epsilon": "epsilon_cutoff", "eta": "eta_cutoff", "seed": None, "stop": "stop_strings"}
#: infergen's sampling setting -> vLLM's ``SamplingParams`` field (None: vLLM has none).
VLLM_NAMES = {"logit_bias": "logit_bias", "repetition_penalty": "repetition_penalty",
              "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
              "no_repeat_ngram_size": None, "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
              "min_p": "min_p", "typical_p": None, "epsilon": None, "eta": None, "seed": "seed", "stop": "stop"}


def _split_settings(params) -> tuple[SamplingParams, dict]:
    """A dict of generation settings (or a SamplingParams) -> (SamplingParams, the call's other settings),
    each checked: a call setting against :data:`CALL_SETTINGS`, and no per-row tensor (a peer's config
    holds one value per call)."""
    if not isinstance(params, (SamplingParams, dict)):
        raise TypeError(f"params must be a SamplingParams or a dict of generation settings, got "
                        f"{type(params).__name__}")
    params = dataclasses.asdict(params) if isinstance(params, SamplingParams) else params
    unknown = set(params) - set(_SAMPLING_NAMES) - set(CALL_SETTINGS)
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}; known: "
                         f"{sorted(_SAMPLING_NAMES + tuple(CALL_SETTINGS))}")
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            raise ValueError(f"{name} is a per-row tensor of shape {tuple(value.shape)}: a peer's settings hold "
                             "one value per call; give a number")
    call = {k: v for k, v in params.items() if k in CALL_SETTINGS and v is not None}
    for name, value in call.items():
        spec = CALL_SETTINGS[name]
        for v in value if isinstance(value, (list, tuple)) else [value]:  # eos_token_id may be a list
            if spec is not None:
                check_number(name, v, **spec)
    return SamplingParams.from_kwargs(**{k: v for k, v in params.items() if k in _SAMPLING_NAMES}), call


def to_generation_config(params):
    """infergen settings (a :class:`~infergen.params.SamplingParams` or a dict that may also hold
    :data:`CALL_SETTINGS`) -> a transformers ``GenerationConfig`` that decodes the same way.

    ``temperature`` 0 means greedy (``do_sample=False``); any other temperature samples. ``logit_bias``
    {id: bias} becomes ``sequence_bias`` {(id,): bias}. ``seed`` is not part of a ``GenerationConfig``
    (call ``torch.manual_seed`` before ``generate``); ``stop`` strings become ``stop_strings``
    (``generate`` then also needs ``tokenizer=``). Settings transformers lacks (frequency and presence
    penalties, :data:`TRANSFORMERS_NAMES`) raise ``ValueError``.
    """
    from transformers import GenerationConfig

    sampling, call = _split_settings(params)
    active = sampling.active()
    for name in active:
        if TRANSFORMERS_NAMES[name] is None and name != "seed":
            raise ValueError(f"transformers has no {name} (OpenAI/vLLM semantics); use repetition_penalty or "
                             "infergen/vLLM")
    do_sample = not sampling.is_greedy
    kw = {"do_sample": do_sample, "num_beams": call.get("num_beams", 1)}
    for name, value in active.items():
        target = TRANSFORMERS_NAMES[name]
        if target is None or (setting(name).sampling_only and not do_sample):
            continue
        if name == "logit_bias":
            value = {(int(t),): float(b) for t, b in value.items()}
        elif name == "stop":
            value = list(value)
        kw[target] = value
    if do_sample:
        kw.setdefault("temperature", float(sampling.temperature))
        kw.setdefault("top_k", 0)  # transformers' default is 50; infergen's is "off"
        kw.setdefault("top_p", 1.0)
    kw.update({k: v for k, v in call.items() if k != "num_beams"})
    return GenerationConfig(**kw)


#: transformers' ``GenerationConfig`` fields that do not choose tokens, or that belong to the call
#: (:data:`CALL_SETTINGS`; lengths, beams, special token ids, outputs, caching, an assistant model's
#: settings): :func:`from_generation_config` leaves them to the caller.
TRANSFORMERS_CALL_FIELDS = (*CALL_SETTINGS, "max_length", "min_length", "bos_token_id", "decoder_start_token_id",
                            "use_cache", "cache_implementation", "cache_config", "max_cache_len",
                            "return_dict_in_generate",
                            "output_attentions", "output_hidden_states", "output_scores", "output_logits",
                            "compile_config", "disable_compile", "low_memory", "prefill_chunk_size",
                            "continuous_batching_config", "generation_kwargs", "is_assistant", "num_assistant_tokens",
                            "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
                            "target_lookbehind", "return_legacy_cache", "_from_model_config", "transformers_version",
                            "do_sample")
#: The value ``generate()`` uses for a field left unset (transformers 5 keeps them None until then) where it
#: is not the field's "off" value, and the "off" value of the fields infergen has no setting for.
TRANSFORMERS_UNSET = {"top_k": 50, "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0,
                      "num_beam_groups": 1, "diversity_penalty": 0.0, "guidance_scale": 1.0}


def from_generation_config(config) -> SamplingParams:
    """A transformers ``GenerationConfig`` -> the :class:`~infergen.params.SamplingParams` that decodes the
    same way (the inverse of :func:`to_generation_config` for the settings both know).

    Every field is accounted for: the sampling fields of :data:`TRANSFORMERS_NAMES` are mapped (a field
    left unset takes the value ``generate()`` would fill in, e.g. ``top_k`` 50 when sampling;
    ``sequence_bias`` as a dict or a list of ``[[id], bias]`` pairs), the fields of
    :data:`TRANSFORMERS_CALL_FIELDS` are left to the call, and any other field set to something but its
    "off" value (``bad_words_ids``, ``suppress_tokens``, a multi-token ``sequence_bias``, ...) raises a
    ``ValueError`` that names it: infergen has no setting that decodes the same way.
    """
    fields = {k: v for k, v in config.to_dict().items()  # those set to something but "off"
              if v is not None and v is not False and v != [] and v != {} and v != TRANSFORMERS_UNSET.get(k)}
    settings = {name: fields.pop(target, TRANSFORMERS_UNSET.get(target))
                for name, target in TRANSFORMERS_NAMES.items() if target}
    bias = settings["logit_bias"]  # {(ids...): bias} or [[ids, bias], ...]
    pairs = [(tuple(ids), b) for ids, b in (bias.items() if isinstance(bias, dict) else bias or ())]
    for ids, _ in pairs:
        if len(ids) != 1:
            raise ValueError(f"sequence_bias on the sequence {list(ids)}: infergen's logit_bias biases single "
                             "tokens; a bias on a sequence of several tokens has no infergen setting")
    settings["logit_bias"] = {int(ids[0]): float(b) for ids, b in pairs} or None
    refused = sorted(set(fields) - set(TRANSFORMERS_CALL_FIELDS))
    if refused:
        raise ValueError(f"GenerationConfig sets {', '.join(f'{k}={fields[k]!r}' for k in refused)}: infergen has no "
                         "setting that decodes the same way; unset it to map the rest")
    if not config.do_sample:
        settings = {k: v for k, v in settings.items() if not setting(k).sampling_only}
        settings["temperature"] = 0.0
    settings["top_k"] = settings.get("top_k") or None  # 0 = off in both
    return SamplingParams.from_kwargs(**settings)


def to_vllm_sampling_params(params) -> dict:
    """infergen settings -> keyword arguments for vLLM's ``SamplingParams`` (a plain dict: no vLLM needed).

    ``vllm.SamplingParams(**to_vllm_sampling_params(p))``. Greedy is ``temperature=0`` in both.
    ``max_new_tokens`` -> ``max_tokens``, ``eos_token_id`` -> ``stop_token_ids``, ``top_k`` None -> 0
    (vLLM: 0 or -1 means "all tokens"). vLLM has no typical/epsilon/eta sampling nor n-gram bans
    (:data:`VLLM_NAMES`), and beam search has its own entry point (``LLM.beam_search``): those raise
    ``ValueError``.
    """
    sampling, call = _split_settings(params)
    active = sampling.active()
    for name in active:
        if VLLM_NAMES[name] is None:
            raise ValueError(f"vLLM's SamplingParams has no {name}")
    if call.get("num_beams", 1) != 1:
        raise ValueError("vLLM runs beam search through LLM.beam_search(BeamSearchParams(beam_width=...)), "
                         "not SamplingParams")
    out: dict[str, object] = {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
           "top_k": int(sampling.top_k or 0), "min_p": float(sampling.min_p),
           "repetition_penalty": float(sampling.repetition_penalty),
           "frequency_penalty": float(sampling.frequency_penalty),
           "presence_penalty": float(sampling.presence_penalty), "n": int(call.get("num_return_sequences", 1))}
    if sampling.seed is not None:
        out["seed"] = int(sampling.seed)
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    if sampling.logit_bias:
        out["logit_bias"] = {int(t): float(b) for t, b in sampling.logit_bias.items()}
    if "max_new_tokens" in call:
        out["max_tokens"] = int(call["max_new_tokens"])
    if "min_new_tokens" in call:
        out["min_tokens"] = int(call["min_new_tokens"])
    if "eos_token_id" in call:
        eos = call["eos_token_id"]
        out["stop_token_ids"] = [int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])]
    return out
