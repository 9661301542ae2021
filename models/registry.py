"""Model registry: every model family registers under a name and is built by that name.

The registry is the single place where a config's `model.name` becomes a module, so it is also the
place that explains a bad name, a bad argument or a model/data pair that does not fit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from models.contract import INPUT_KINDS, TASKS, SequenceModel

__all__ = ["INPUT_KINDS", "TASKS", "build_model", "check_task", "get_model_class", "list_models", "register_model"]

_REGISTRY: dict[str, type[SequenceModel]] = {}
ModelClass = TypeVar("ModelClass", bound=type[SequenceModel])


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator that makes a model buildable as `build_model(name, ...)`.

    The class subclasses models.contract.SequenceModel and declares at least `supported_tasks`
    (docs/model_contract.md).
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}.")
        if not (isinstance(cls, type) and issubclass(cls, SequenceModel)):
            raise ValueError(
                f"{getattr(cls, '__name__', cls)} must subclass models.contract.SequenceModel to be "
                f"registered as {name!r} (see docs/model_contract.md)."
            )
        cls.check_contract()
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[SequenceModel]:
    """The class registered under `name`; an unknown name fails with the list of known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is not registered; choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def check_task(name: str, task: str, data_name: str = "the data", input_kind: str = "vectors") -> None:
    """Fail before training when model `name` cannot learn `task` from `input_kind` inputs,
    naming what would work."""
    cls = get_model_class(name)
    fits = [
        m for m in list_models() if task in _REGISTRY[m].supported_tasks and input_kind in _REGISTRY[m].supported_inputs
    ]
    if task not in cls.supported_tasks:
        problem = f"the {task!r} task of {data_name} (it supports {', '.join(cls.supported_tasks)})"
    elif input_kind not in cls.supported_inputs:
        problem = f"the {input_kind} that {data_name} yields (it reads {', '.join(cls.supported_inputs)})"
    else:
        return
    raise ValueError(f"model {name!r} does not fit {problem}; models that fit: {', '.join(fits) or 'none'}.")


def build_model(name: str, **kwargs) -> SequenceModel:
    """Build the model registered under `name` with constructor arguments `kwargs`.

    Unknown arguments fail with one sentence listing the arguments the model takes.
    """
    cls = get_model_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} "
            f"of model {name!r}; it takes: {', '.join(accepted)}."
        )
    return cls(**kwargs)
