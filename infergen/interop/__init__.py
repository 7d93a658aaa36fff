"""infergen's interop companion: the library from outside Python, and in the peers' terms.

* :mod:`infergen.interop.cli`: the command line, ``python -m infergen prepare|generate`` (also the
  ``infergen`` script).
* :mod:`infergen.interop.gguf`: the bundled model's converter (``python -m infergen prepare``): its GGUF
  file dequantized once into a transformers directory that :func:`~infergen.load_model` reads.
* :mod:`infergen.interop.mappings`: the sampling settings as transformers' ``GenerationConfig`` and
  vLLM's ``SamplingParams`` (chapter 10's parameter table), and back.
* :mod:`infergen.interop.llamacpp`: :class:`~infergen.interop.llamacpp.LlamaCppModel`, llama.cpp's forward
  pass behind the core's model and cache protocols, so the library's decoders drive llama.cpp
  (``pip install "infergen[llamacpp]"``; llama_cpp is imported only when a model is made).

A companion, not part of the core a student reads: it sits above the core and imports only its public
doors; the core never imports it (the import-linter contracts in pyproject.toml).
"""
from .llamacpp import LlamaCppModel
from .mappings import (CALL_SETTINGS, TRANSFORMERS_NAMES, VLLM_NAMES, from_generation_config, to_generation_config,
                       to_vllm_sampling_params)

__all__ = ["LlamaCppModel", "CALL_SETTINGS", "TRANSFORMERS_NAMES", "VLLM_NAMES", "from_generation_config", "to_generation_config",
           "to_vllm_sampling_params"]
