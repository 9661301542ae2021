"""The model contract: what a registered model declares, and what the training layer reads.

Every model registered with `@register_model(name)` subclasses `SequenceModel` and overrides only
what differs from the defaults below (docs/model_contract.md explains each entry with an example):

    supported_tasks          tasks it can learn, drawn from TASKS                  (must be set)
    supported_inputs         input kinds it reads, drawn from INPUT_KINDS' values  (vectors)
    needs_reference_process  build_module passes the DataModule's true process as `process`  (False)
    reads_prompt_separator   build_module passes the DataModule's `separator_token`          (False)
    sees_future_steps        an output at t depends on inputs after t (refused for next-step) (False)
    extra_length             positions the model adds to every input (latent tokens)          (0)
    check_input_length(n)    fail in one sentence when inputs of n steps cannot be read   (no limit)
    forward_with_state(x, s) optional: (outputs, final state) of a chunk, for data.stateful=true (absent)

`forward(x, return_diagnostics=False)` returns the predictions, and with return_diagnostics=True
also a dict of per-step (B, T) tensors the model can explain (`{}` when it has none).

Errors that reject one option carry its name as data: `OptionError(key, message)`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

TASKS = ("regression", "classification", "seq2seq")
# What a DataModule feeds a model, named by the size attribute it declares: vectors (input_dim),
# token ids (vocab_size) or 2-D fields (input_shape, (C, H, W)).
INPUT_KINDS = {"input_dim": "vectors", "vocab_size": "tokens", "input_shape": "fields"}


class OptionError(ValueError):
    """A rejected option: `key` is its name (as in the config), the message one sentence naming it
    and what is allowed. Callers route the error by `key`, never by parsing the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class SequenceModel(nn.Module):
    """Base class of every registered model: the contract entries with their defaults."""

    supported_tasks: ClassVar[tuple[str, ...]] = ()
    supported_inputs: ClassVar[tuple[str, ...]] = ("vectors",)
    needs_reference_process: ClassVar[bool] = False
    reads_prompt_separator: ClassVar[bool] = False

    @property
    def sees_future_steps(self) -> bool:
        """True when an output at step t depends on inputs after t (e.g. a bidirectional RNN)."""
        return False

    @property
    def extra_length(self) -> int:
        """Positions the model adds to every input (e.g. latent tokens); 0 for most models."""
        return 0

    def check_input_length(self, length: int) -> None:
        """Fail in one sentence when inputs of `length` steps cannot be read; no limit by default."""

    @classmethod
    def check_contract(cls) -> None:
        """Fail in one sentence when the class declarations break the contract (run at registration)."""
        unknown = set(cls.supported_tasks) - set(TASKS)
        if not cls.supported_tasks or unknown:
            raise ValueError(f"{cls.__name__}.supported_tasks must be a non-empty subset of {TASKS}.")
        if not cls.supported_inputs or set(cls.supported_inputs) - set(INPUT_KINDS.values()):
            raise ValueError(
                f"{cls.__name__}.supported_inputs must be a non-empty subset of {tuple(INPUT_KINDS.values())}."
            )
