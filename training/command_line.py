"""Checks and additions to a train_hydra.py command line, made before Hydra parses it."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


def parsed_overrides(argv: list[str]) -> list:
    """The overrides of a train_hydra.py command line; none for malformed ones, which Hydra's own
    parser then explains when it runs."""
    try:
        return OverridesParser.create().parse_overrides(get_args_parser().parse_args(argv).overrides)
    except Exception:
        return []


def check_group_choices(argv: list[str], config_dir: Path) -> None:
    """Fail in one sentence when a command-line override picks a config that does not exist.

    Hydra would report it too, but as a multi-line listing of config files; for `model=` the
    useful answer is the list of registered models.
    """
    for override in parsed_overrides(argv):
        group = override.key_or_group
        # hydra/* groups also hold plugin configs that live outside configs/: Hydra checks those.
        if override.package is not None or group.split("/")[0] == "hydra" or not (config_dir / group).is_dir():
            continue
        available = sorted(path.stem for path in (config_dir / group).glob("*.yaml"))
        chosen = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        # A list picks several configs of the group at once: `"callbacks=[default,training_curves]"`.
        chosen = [item for choice in chosen for item in (choice if isinstance(choice, list) else [choice])]
        for choice in chosen:
            if choice is not None and str(choice) not in available:
                kind = "registered model or model variant" if group == "model" else f"config in configs/{group}"
                sys.exit(f"Invalid config: {group}={choice} is not a {kind}; choose one of: {', '.join(available)}.")


EXCLUDE_KEYS_OVERRIDE = "hydra.job.config.override_dirname.exclude_keys"


def name_jobs_by_what_they_sweep(argv: list[str], config_dir: Path) -> list[str]:
    """`argv` plus an override that leaves the command-line overrides every job shares out of the job
    dir names, so `-m model=lstm,gru trainer=fast` names its jobs `0_model=lstm` and `1_model=gru`.

    Only the command line says which overrides are swept; the jobs' configs no longer do.
    """
    overrides = parsed_overrides(argv)
    if any(override.key_or_group == EXCLUDE_KEYS_OVERRIDE for override in overrides):
        return argv  # the user chose the excluded keys
    shared = [
        override.key_or_group
        for override in overrides
        if not override.is_sweep_override() and not override.key_or_group.startswith("hydra")
    ]
    if not shared:
        return argv
    defaults = OmegaConf.load(config_dir / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys
    return [*argv, f"{EXCLUDE_KEYS_OVERRIDE}=[{','.join(dict.fromkeys([*defaults, *shared]))}]"]
