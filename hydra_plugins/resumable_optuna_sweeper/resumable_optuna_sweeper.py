"""An Optuna sweeper whose re-run finishes the study it stored, instead of starting `n_trials` more.

Hydra's Optuna sweeper (hydra-optuna-sweeper 1.3) loads a stored study (`storage`, `study_name`)
but then always asks for `n_trials` new trials, numbers its jobs from 0 again and re-seeds the
sampler, so a re-run repeats the first trials' parameters. Re-running the same multirun command
here continues the study to `n_trials` in all:

- trials that ended (complete, pruned, failed) count and are not run again;
- a trial left running by a killed sweep is marked failed (user attribute `interrupted`) and its
  parameters are queued first, so the search runs what it had chosen;
- job numbers go on from the study's trial numbers, so job dirs never collide with earlier ones;
- the sampler is re-seeded from (seed, trials so far), so new trials differ from the earlier ones.

Only one process may sweep a study at a time: a trial another live sweep is running would be
taken for an interrupted one.

Hydra only loads plugins from the `hydra_plugins` namespace package, hence the location.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attribute of a trial a killed sweep left running


class ResumableOptunaSweeper(OptunaSweeper):
    """`hydra/sweeper: optuna` with `_target_` set to this class; the options are Optuna's."""

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        if impl.storage is not None:
            import optuna

            study = optuna.create_study(
                study_name=impl.study_name,
                storage=impl.storage,
                directions=impl._get_directions(),
                load_if_exists=True,
            )
            impl.n_trials, impl.job_idx = continue_study(study, impl.n_trials)
            sampler_config = impl.config.hydra.sweeper.sampler
            if study.trials and sampler_config.get("seed") is not None:
                impl.sampler = instantiate(sampler_config, seed=continued_seed(sampler_config.seed, len(study.trials)))
        return super().sweep(arguments)


def continue_study(study: Any, n_trials: int) -> tuple[int, int]:
    """Prepare a stored study for a re-run that brings it to `n_trials` ended trials.

    Returns (trials still to run, the job number of the next trial asked).
    """
    import optuna
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)  # only a running trial takes one
        study.tell(trial.number, state=TrialState.FAIL)
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.10, and stable since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial(trial.params)
        log.info(f"trial {trial.number} was interrupted; its parameters {trial.params} run again first")
    trials = study.get_trials(deepcopy=False)
    ended = [trial for trial in trials if trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED, False)]
    waiting = [trial.number for trial in trials if trial.state == TrialState.WAITING]
    remaining = max(0, n_trials - len(ended))
    if ended:
        log.info(f"study {study.study_name}: {len(ended)} of {n_trials} trials ended before; {remaining} to run")
    # Asking pops the queued trials first, in number order, then numbers new ones from len(trials).
    return remaining, min(waiting) if waiting else len(trials)


def continued_seed(seed: int, trials_so_far: int) -> int:
    """A sampler seed for a re-run: reproducible, and apart from the first run's stream."""
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])
