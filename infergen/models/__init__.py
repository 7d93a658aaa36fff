"""Models: the native Llama-family decoder, the transformers adapter, and ``load_model``."""
from .hf import HFCache, HFModel, as_model
from .llama import LlamaModel, ModelOutput
from .loading import load_model

__all__ = ["HFCache", "HFModel", "LlamaModel", "ModelOutput", "as_model", "load_model"]
