"""The same settings in the peers' terms: transformers' ``GenerationConfig`` and vLLM's ``SamplingParams``.

:func:`to_generation_config` turns infergen's sampling settings into a transformers ``GenerationConfig``
(:func:`from_generation_config` is its inverse) and :func:`to_vllm_sampling_params` into the fields of
vLLM's ``SamplingParams``. The name tables :data:`TRANSFORMERS_NAMES` and :data:`VLLM_NAMES` say which
field each setting becomes. Settings a peer does not have raise ``ValueError`` instead of being dropped
silently (transformers has no frequency/presence penalty; vLLM has no typical/epsilon/eta sampling and
runs beam search through a separate entry point).
"""
from __future__ import annotations

from .params import SETTINGS, SamplingParams, setting

__all__ = ["CALL_SETTINGS", "TRANSFORMERS_NAMES", "VLLM_NAMES", "from_generation_config", "to_generation_config",
           "to_vllm_sampling_params"]

#: Generation settings that are not sampling settings (they belong to the call, not to SamplingParams).
CALL_SETTINGS = ("max_new_tokens", "min_new_tokens", "eos_token_id", "pad_token_id", "num_beams", "length_penalty",
                 "early_stopping", "num_return_sequences")
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
    """A dict of generation settings (or a SamplingParams) -> (SamplingParams, the call's other settings)."""
    if isinstance(params, SamplingParams):
        return params, {}
    if not isinstance(params, dict):
        raise TypeError(f"params must be a SamplingParams or a dict of generation settings, got "
                        f"{type(params).__name__}")
    unknown = set(params) - set(_SAMPLING_NAMES) - set(CALL_SETTINGS)
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}; known: "
                         f"{sorted(_SAMPLING_NAMES + CALL_SETTINGS)}")
    sampling = SamplingParams.from_kwargs(**{k: v for k, v in params.items() if k in _SAMPLING_NAMES})
    return sampling, {k: v for k, v in params.items() if k in CALL_SETTINGS and v is not None}


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


def from_generation_config(config) -> SamplingParams:
    """A transformers ``GenerationConfig`` -> the :class:`~infergen.params.SamplingParams` that decodes the
    same way (the inverse of :func:`to_generation_config` for the settings both know)."""
    settings = {}
    for name, target in TRANSFORMERS_NAMES.items():
        value = getattr(config, target, None) if target else None
        if value is None:
            continue
        if name == "logit_bias":
            value = {int(k[0]): float(b) for k, b in value.items() if len(k) == 1}
        elif name == "top_k" and value == 0:
            continue  # 0 = off in both
        settings[name] = value
    if not getattr(config, "do_sample", False):
        settings = {k: v for k, v in settings.items() if not setting(k).sampling_only}
        settings["temperature"] = 0.0
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
