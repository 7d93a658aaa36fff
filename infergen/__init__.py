"""infergen: LLM inference in one readable library -- the code every chapter of the book imports.

    import infergen as ig
    model, tokenizer = ig.load_model("smollm2-135m")           # offline; hub ids and local dirs too
    ig.generate(model, tokenizer, "The future of AI is", strategy="sample", temperature=0.8).text

The document's functions keep their names: ``generate_autoregressive``, ``greedy_search``,
``beam_search``, ``contrastive_search``, ``mcts_decode``, ``sample_with_temperature`` (decoders on
token ids) and ``apply_temperature``, ``apply_top_k``, ``apply_top_p``, ``apply_frequency_penalty``
(logits processors). Every sampling setting is a field of :class:`SamplingParams`; every decoder is
built from the shared steps of :mod:`infergen.decoding.steps`.

This package is the *core*. Three companions sit above it, each imported by its full name and never by
the core: :mod:`infergen.book` (the chapters' figures and widgets; ``pip install "infergen[book]"``),
:mod:`infergen.bench` (the benchmarks the performance chapter runs; ``python -m infergen.bench``) and
:mod:`infergen.course` (the course assignments).
"""
from . import metrics, serving
from .cache import Cache, KVCache
from .decoding import (GenerationOutput, beam_search, contrastive_search, decode_steps, diverse_beam_search,
                       generate_autoregressive, greedy_search, mcts_decode, sample_with_temperature,
                       speculative_decode)
from .decoding.steps import Rows, Sampler, decode_n_tokens, decode_one, prefill
from .models import HFModel, LlamaModel, as_model, load_model
from .models.llama import compile_decode
from .models.protocol import GenerationDefaults, LanguageModel, ModelOutput
from .params import SamplingParams
from .processors import (PIPELINE_ORDER, LogitsContext, LogitsPipeline, apply_epsilon, apply_eta,
                         apply_frequency_penalty, apply_logit_bias, apply_min_p, apply_no_repeat_ngram,
                         apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, apply_typical,
                         check_finite_row, safe_probs, sample_from_logits)
from .registry import get_decoder, register_decoder, register_processor
from .text import GenerationResult, generate, stream

__version__ = "0.1.0"

__all__ = [
    # text in, text out
    "GenerationResult", "generate", "stream",
    # decoders (the document's names first)
    "beam_search", "contrastive_search", "generate_autoregressive", "greedy_search", "mcts_decode",
    "sample_with_temperature",
    "decode_steps", "diverse_beam_search", "speculative_decode",
    # settings and logits processors
    "SamplingParams", "PIPELINE_ORDER", "LogitsContext", "LogitsPipeline",
    "apply_epsilon", "apply_eta", "apply_frequency_penalty", "apply_logit_bias", "apply_min_p",
    "apply_no_repeat_ngram", "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p",
    "apply_typical", "check_finite_row", "safe_probs", "sample_from_logits",
    # the shared decode steps
    "Rows", "Sampler", "decode_n_tokens", "decode_one", "prefill",
    # models and caches
    "Cache", "GenerationDefaults", "HFModel", "KVCache", "LanguageModel", "LlamaModel", "ModelOutput",
    "as_model", "compile_decode", "load_model",
    # results
    "GenerationOutput",
    # extension points
    "get_decoder", "register_decoder", "register_processor",
    # submodules
    "metrics", "serving",
]
