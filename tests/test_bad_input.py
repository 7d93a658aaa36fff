"""Bad input fails at the call with a message naming the parameter, the value and the valid range."""
import math

import pytest
import torch

import infergen


@pytest.fixture()
def ids():
    return torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(temperature=-0.5), ValueError, r"temperature must be in \[0, inf\), got -0.5"),
    (dict(temperature=math.nan), ValueError, r"temperature must be in \[0, inf\), got nan"),
    (dict(top_k=-1), ValueError, r"top_k .*-1"),
    (dict(top_k=2.5), TypeError, r"top_k must be an integer, got 2.5"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\], got 1.5"),
    (dict(min_p=-0.1), ValueError, r"min_p must be in \[0, 1\], got -0.1"),
    (dict(min_p=1.1), ValueError, r"min_p must be in \[0, 1\], got 1.1"),
    (dict(frequency_penalty=2.5), ValueError, r"frequency_penalty must be in \[-2, 2\], got 2.5"),
    (dict(presence_penalty=-2.1), ValueError, r"presence_penalty must be in \[-2, 2\], got -2.1"),
    (dict(repetition_penalty=0.0), ValueError, r"repetition_penalty .*got 0.0"),
    (dict(repetition_penalty=-1.0), ValueError, r"repetition_penalty .*got -1.0"),
    (dict(max_new_tokens=-1), ValueError, r"max_new_tokens must be in \[0, inf\), got -1"),
    (dict(max_new_tokens=3.5), TypeError, r"max_new_tokens must be an integer"),
    (dict(seed=-3), ValueError, r"seed must be in \[0, 18446744073709551615\], got -3"),
])
def test_sampling_parameters(tiny_native, ids, kwargs, error, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=message):
        infergen.generate_autoregressive(tiny_native, ids, **kwargs)


def test_greedy_rejects_sampling_parameters(tiny_native, ids):
    with pytest.raises(ValueError, match="greedy_search does not sample, so top_p=0.9"):
        infergen.greedy_search(tiny_native, ids, 4, top_p=0.9)


@pytest.mark.parametrize("bad, error, message", [
    (torch.tensor([[1.0, 2.0]]), TypeError, r"input_ids must hold integer token ids .*float32"),
    (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, r"input_ids must have shape \[T\] or \[B, T\], got shape \(1, 2, 3\)"),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, r"input_ids is empty"),
    ([[1, 2, 3]], TypeError, r"input_ids must be a torch.LongTensor, got list"),
    (torch.tensor([[5, 96]]), ValueError, r"input_ids must be token ids in \[0, 95\]"),
])
def test_input_ids(tiny_native, bad, error, message):
    with pytest.raises(error, match=message):
        infergen.greedy_search(tiny_native, bad, 4)


def test_attention_mask_shape_and_empty_rows(tiny_native, ids):
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 5\)"):
        infergen.greedy_search(tiny_native, ids, 4, attention_mask=torch.ones(2, 4))
    mask = torch.ones(2, 5)
    mask[1] = 0
    with pytest.raises(ValueError, match="attention_mask has a row with no real token"):
        infergen.greedy_search(tiny_native, ids, 4, attention_mask=mask)


def test_prompt_longer_than_the_context(tiny_native):
    ids = torch.randint(3, 96, (1, 250))
    with pytest.raises(ValueError, match=r"prompt length 250 \+ max_new_tokens 10 = 260 exceeds the model's "
                                         r"context of 256 tokens.*valid range: \[0, 6\]"):
        infergen.greedy_search(tiny_native, ids, 10)


def test_eos_token_id_out_of_vocab(tiny_native, ids):
    with pytest.raises(ValueError, match=r"eos_token_id must be in \[0, 95\], got 500"):
        infergen.greedy_search(tiny_native, ids, 4, eos_token_id=500)


def test_empty_prompt_text(smollm):
    model, tok = smollm
    with pytest.raises(ValueError, match="prompt is empty"):
        infergen.generate(model, tok, "")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        infergen.generate(model, tok, [])
    with pytest.raises(TypeError, match="each prompt must be a string"):
        infergen.generate(model, tok, ["ok", 3])


def test_generator_type(tiny_native, ids):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        infergen.sample_with_temperature(tiny_native, ids, 4, generator=123)


class _BrokenModel(torch.nn.Module):
    """Wraps a model and replaces its logits: NaN, or all -inf, to check we never emit a garbage token."""

    def __init__(self, inner, fill):
        super().__init__()
        self.inner, self.fill = inner, fill
        self.config = inner.config

    device = property(lambda self: self.inner.device)
    dtype = property(lambda self: self.inner.dtype)
    max_context = property(lambda self: self.inner.max_context)

    def new_cache(self, *a):
        return self.inner.new_cache(*a)

    def forward(self, *a, **k):
        out = self.inner(*a, **k)
        out.logits = torch.full_like(out.logits, self.fill)
        return out


@pytest.mark.parametrize("fill, message", [(math.nan, "NaN"), (-math.inf, "all -inf")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bad_logits_never_become_a_token(tiny_native, ids, fill, message, temperature):
    with pytest.raises(ValueError, match=message):
        infergen.generate_autoregressive(_BrokenModel(tiny_native, fill), ids, 3, temperature=temperature)
