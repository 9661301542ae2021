"""Model registry and model families. Importing this package registers every model."""

from models import convgru, gated_delta, hamilton_imm, latent_transformer, recurrent, resnet_convgru, z2_seam  # noqa: F401  (registration side effect)
from models.contract import OptionError, SequenceModel
from models.registry import build_model, check_task, get_model_class, list_models, register_model

__all__ = [
    "OptionError",
    "SequenceModel",
    "build_model",
    "check_task",
    "get_model_class",
    "list_models",
    "register_model",
]
