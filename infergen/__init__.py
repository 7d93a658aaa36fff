"""infergen: LLM inference in one readable library -- the code every chapter of the book imports.

    import infergen as ig
    model, tokenizer = ig.load_model("smollm2-135m")           # offline; hub ids and local dirs too
    ig.generate(model, tokenizer, "The future of AI is", strategy="sample", temperature=0.8).text

The document's functions keep their names: ``generate_autoregressive``, ``greedy_search``,
``beam_search``, ``contrastive_search``, ``mcts_decode``, ``sample_with_temperature`` (decoders on
token ids) and ``apply_temperature``, ``apply_top_k``, ``apply_top_p``, ``apply_frequency_penalty``
(logits processors).
"""
from .cache import KVCache
from . import metrics, viz
from .decoding import (GenerationOutput, beam_search, contrastive_search, decode_steps, diverse_beam_search,
                       generate_autoregressive, greedy_search, mcts_decode, sample_with_temperature,
                       speculative_decode)
from .generate import GenerationResult, generate, stream
from .models import HFModel, LlamaModel, as_model, load_model
from .processors import (PIPELINE_ORDER, LogitsContext, LogitsPipeline, check_finite_row, safe_probs, apply_epsilon, apply_eta, apply_frequency_penalty, apply_logit_bias,
                         apply_min_p, apply_no_repeat_ngram, apply_repetition_penalty, apply_temperature,
                         apply_top_k, apply_top_p, apply_typical, sample_from_logits)
from .registry import get_decoder, register_decoder, register_processor

__version__ = "0.1.0"

__all__ = [
    "PIPELINE_ORDER", "LogitsContext", "check_finite_row", "safe_probs", "KVCache", "GenerationOutput", "GenerationResult", "HFModel", "LlamaModel", "LogitsPipeline",
    "apply_epsilon", "apply_eta", "apply_frequency_penalty", "apply_logit_bias", "apply_min_p",
    "apply_no_repeat_ngram", "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p",
    "apply_typical", "as_model", "decode_steps", "generate", "generate_autoregressive", "get_decoder",
    "greedy_search", "beam_search", "diverse_beam_search", "contrastive_search", "mcts_decode",
    "speculative_decode", "metrics", "viz", "load_model", "register_decoder", "register_processor", "sample_from_logits",
    "sample_with_temperature", "stream",
]
