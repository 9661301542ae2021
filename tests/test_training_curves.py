"""The training-curves callback: a PNG in the run dir, redrawn after every validation of fit with the
curves collected so far, without any logger, and continued from a checkpoint."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

from train_hydra import CONFIG_DIR, compose_config, train
from training.command_line import check_group_choices
from visualization.training_curves import TrainingCurvesCallback

RUN = [
    "callbacks=[default,training_curves]",
    "callbacks.rich_progress_bar=null",
    "logger=none",
    "test=false",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=2",
    "data.generator.T=2000",
    "model=gru",
    "model.hidden_dim=8",
]


@pytest.fixture(scope="module")
def curves_run(tmp_path_factory):
    """One 2-epoch run (a drawing costs seconds, so the tests share it); every drawing's PNG bytes and
    point counts are recorded as they are made."""
    run_dir = tmp_path_factory.mktemp("curves")
    drawn = []
    original = TrainingCurvesCallback.draw

    def recording_draw(self, **kwargs):
        path = original(self, **kwargs)
        drawn.append((path.read_bytes(), {tag: len(points) for tag, points in self.scalars.items()}))
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainingCurvesCallback, "draw", recording_draw)
        train(compose_config(RUN, run_dir))
    return run_dir, drawn


def test_the_png_exists_and_is_redrawn_after_every_validation(curves_run):
    run_dir, drawn = curves_run
    png = run_dir / "figures" / "training_curves.png"
    assert png.is_file() and png.read_bytes() == drawn[-1][0]
    # One drawing per validation of fit (the sanity check draws none), each with more points.
    assert len(drawn) == 2 and drawn[0][0] != drawn[1][0]
    first, second = drawn[0][1], drawn[1][1]
    assert (first["train/loss"], second["train/loss"]) == (6, 12)
    assert (first["val/mse"], second["val/mse"]) == (1, 2)
    assert second["train/lr"] == second["train/grad_norm"] == 6  # every 2nd of 12 steps
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image[..., :3].std() > 0.05  # a drawn figure, not a blank canvas
    assert not list((run_dir / "figures").glob(".*partial*"))


def test_the_curves_continue_from_a_checkpoint(curves_run):
    run_dir, _ = curves_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [value for key, value in checkpoint["callbacks"].items() if "TrainingCurvesCallback" in key]
    resumed = TrainingCurvesCallback()
    resumed.load_state_dict(state)
    assert len(resumed.scalars["val/mse"]) == 2 and len(resumed.scalars["train/loss"]) == 12


def test_a_filename_that_is_not_a_png_is_refused():
    with pytest.raises(ValueError, match=r"^filename='curves.jpg' must end in \.png\.$"):
        TrainingCurvesCallback(filename="curves.jpg")


def test_the_command_line_accepts_a_list_of_callback_configs_and_names_a_bad_one():
    check_group_choices(["callbacks=[default,training_curves]"], CONFIG_DIR)  # as the README documents it
    with pytest.raises(SystemExit, match=r"callbacks=nope is not a config in configs/callbacks"):
        check_group_choices(["callbacks=[default,nope]"], CONFIG_DIR)
