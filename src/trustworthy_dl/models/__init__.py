"""Models: ``get_model(name, ...)`` registry (MLP, CNN, ResNets, VGGs, GPT-2) and pipeline stages.

Importing this package imports every model module, which registers its models.
"""

from trustworthy_dl.models import cnn, gpt2, lenet, mlp, resnet, vgg  # noqa: F401  (register the models)
from trustworthy_dl.models.norm import NORMS, make_norm
from trustworthy_dl.models.registry import MODELS, get_model, list_models, model_kind, model_sizes
from trustworthy_dl.models.stages import count_parameters, model_blocks, split_into_stages

__all__ = [
    "MODELS",
    "NORMS",
    "count_parameters",
    "get_model",
    "list_models",
    "make_norm",
    "model_blocks",
    "model_kind",
    "model_sizes",
    "split_into_stages",
]
