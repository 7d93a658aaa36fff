"""Models: the native Llama-family decoder, the transformers adapter, and ``load_model``."""
from .hf import HFCache, HFModel, as_model
from .llama import LlamaModel, ModelOutput
from .llamacpp import LlamaCppModel  # imports llama_cpp only when one is made
from .loading import load_model

__all__ = ["HFCache", "HFModel", "LlamaCppModel", "LlamaModel", "ModelOutput", "as_model", "load_model"]
