"""Shared fixtures.

Fast tests use tiny randomly initialised models built from a config (``tiny_hf``, ``tiny_native``,
``tiny_gpt2``); integration tests use the bundled SmolLM2-135M (``smollm``, ``smollm_hf``), which
``make test`` prepares in ``$INFERGEN_CACHE`` before pytest starts.
"""
from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 96


def _tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


@pytest.fixture(scope="session")
def tiny_hf():
    """A tiny random transformers LlamaForCausalLM (fp32, CPU). EOS id 2, pad id 0."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_llama_config()).eval()
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="session")
def tiny_native(tiny_hf):
    """infergen's native model with the same weights as ``tiny_hf``."""
    from infergen.models.llama import LlamaModel

    return LlamaModel.from_hf(tiny_hf)


@pytest.fixture(scope="session")
def tiny_gpt2():
    """A tiny random GPT-2 behind infergen's transformers adapter (a non-Llama architecture)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from infergen.models.hf import HFModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=TINY_VOCAB, n_positions=256,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return HFModel(GPT2LMHeadModel(cfg).eval())


@pytest.fixture(scope="session")
def smollm():
    """The bundled SmolLM2-135M-Instruct as (native model, tokenizer), fp32 on the CPU."""
    import infergen

    return infergen.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm_hf(smollm):
    """transformers' own LlamaForCausalLM on the same converted weights (the peer for parity tests)."""
    from transformers import AutoModelForCausalLM

    from infergen.models.loading import cache_dir

    return AutoModelForCausalLM.from_pretrained(cache_dir() / "smollm2-135m", dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def prompts():
    """A fixed, varied prompt set (different lengths, so batches get left padding)."""
    return [
        "The future of AI is",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):",
        "The capital of France is",
        "Here is a recipe for pancakes:",
        "In 1969, the first humans",
        "The three laws of thermodynamics are",
        "My favourite book is",
    ]


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny models: a second thread only adds waiting, see test_bench.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
