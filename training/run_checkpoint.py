"""RunCheckpoint: Lightning's ModelCheckpoint, keeping the best checkpoint when a run resumes into a
new checkpoint dir (configs/callbacks/model_checkpoint.yaml)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from training.checkpoint_io import atomic_write


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps the best score when a run resumes into another checkpoint dir.

    Lightning's ModelCheckpoint forgets the best score when the checkpoint it resumes from was
    written to another dirpath, so "best" would become the best of the resumed part only. This one
    copies the best checkpoint(s) of the old dir into the new one (atomically; the old files are
    only read) and carries their scores, so later improvements replace the copies, never the
    originals. A best checkpoint that no longer exists is dropped with a warning.

    It also writes last.ckpt after every validation: Lightning 2.6 writes it only when a top-k
    checkpoint was saved at the same step, so after an epoch without improvement a resume would
    start from an older state than the run reached. A callback that stops the run because its latest
    state is bad (NonFiniteGuard) calls `keep_last()`, so last.ckpt stays the state from before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_kept = False

    def keep_last(self) -> None:
        """Write no more last.ckpt in this run: the state the run ends in is not one to resume from."""
        self._last_kept = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def _save_last_unless_saved(self, trainer: Any) -> None:
        if self.save_last and not self._last_kept and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Lightning restores callback states for validate/test too; only a resumed fit carries files.
        self._fitting = stage == "fit"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath", self.dirpath)
        if old_dir == self.dirpath or self.dirpath is None or not getattr(self, "_fitting", True):
            super().load_state_dict(state_dict)
            return
        carried: dict[str, Any] = {}
        for old_path, score in (state_dict.get("best_k_models") or {}).items():
            if not Path(old_path).is_file():
                warnings.warn(
                    f"the best checkpoint {old_path} of the resumed run is gone; its score is not carried.",
                    stacklevel=2,
                )
                continue
            new_path = Path(self.dirpath) / Path(old_path).name
            with open(old_path, "rb") as source:
                atomic_write(new_path, lambda target, source=source: shutil.copyfileobj(source, target))
            carried[str(new_path)] = score
        super().load_state_dict(
            {
                **state_dict,
                "dirpath": self.dirpath,
                "best_k_models": carried,
                "last_model_path": "",
                **self._best_of(carried),
            }
        )

    def _best_of(self, models: dict[str, Any]) -> dict[str, Any]:
        if not models:
            return {
                "best_model_path": "",
                "best_model_score": None,
                "kth_best_model_path": "",
                "kth_value": self.kth_value,
            }
        ordered = sorted(models, key=lambda path: float(models[path]), reverse=self.mode == "max")
        return {
            "best_model_path": ordered[0],
            "best_model_score": models[ordered[0]],
            "kth_best_model_path": ordered[-1],
            "kth_value": models[ordered[-1]],
        }
