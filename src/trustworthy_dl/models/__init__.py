"""Models: ``get_model(name, ...)`` registry (MLP, CNN, ResNets, VGGs, GPT-2)."""

from trustworthy_dl.models.registry import MODELS, get_model, list_models, model_kind, model_sizes

__all__ = ["MODELS", "get_model", "list_models", "model_kind", "model_sizes"]
