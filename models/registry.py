"""Model registry: every model family registers under a name and is built by that name.

The registry is the single place where a config's `model.name` becomes a module, so it is also the
place that explains a bad name, a bad argument or a model/data pair that does not fit.
"""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

from torch import nn

TASKS = ("regression", "classification", "seq2seq")
# What a DataModule feeds a model, named by the size attribute it declares: vectors (input_dim),
# token ids (vocab_size) or 2-D fields (input_shape, (C, H, W)).
INPUT_KINDS = {"input_dim": "vectors", "vocab_size": "tokens", "input_shape": "fields"}

_REGISTRY: dict[str, type[nn.Module]] = {}
ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator that makes a model buildable as `build_model(name, ...)`.

    A registered class declares `supported_tasks`, a tuple drawn from TASKS, and may declare
    `supported_inputs`, drawn from INPUT_KINDS' values (default: vectors only).
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}.")
        unknown = set(getattr(cls, "supported_tasks", ())) - set(TASKS)
        if not getattr(cls, "supported_tasks", ()) or unknown:
            raise ValueError(f"{cls.__name__}.supported_tasks must be a non-empty subset of {TASKS}.")
        if set(supported_inputs(cls)) - set(INPUT_KINDS.values()):
            raise ValueError(f"{cls.__name__}.supported_inputs must be a subset of {tuple(INPUT_KINDS.values())}.")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered under `name`; an unknown name fails with the list of known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is not registered; choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def supported_inputs(cls: type[nn.Module]) -> tuple[str, ...]:
    return getattr(cls, "supported_inputs", ("vectors",))


def check_task(name: str, task: str, data_name: str = "the data", input_kind: str = "vectors") -> None:
    """Fail before training when model `name` cannot learn `task` from `input_kind` inputs,
    naming what would work."""
    cls = get_model_class(name)
    fits = [m for m in list_models() if task in _REGISTRY[m].supported_tasks and input_kind in supported_inputs(_REGISTRY[m])]
    if task not in cls.supported_tasks:
        problem = f"the {task!r} task of {data_name} (it supports {', '.join(cls.supported_tasks)})"
    elif input_kind not in supported_inputs(cls):
        problem = f"the {input_kind} that {data_name} yields (it reads {', '.join(supported_inputs(cls))})"
    else:
        return
    raise ValueError(f"model {name!r} does not fit {problem}; models that fit: {', '.join(fits) or 'none'}.")


def build_model(name: str, **kwargs) -> nn.Module:
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
