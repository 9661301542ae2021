"""Command-line argument types of the benchmarks: argparse refuses a bad value in one sentence that
names the option and what it allows, instead of a traceback deep in a run or a table of timings
of nothing (a batch of 0 rows "passes" every bandwidth target)."""

from __future__ import annotations

import argparse

from models import get_model_class, list_models


def positive_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; give a whole number of at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; give a whole number of at least 0")
    return value


def positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed; give a finite number above 0")
    return value


def trained_vector_models() -> list[str]:
    """Registered models that read vectors and have a train step (the hamilton_imm reference filter has none)."""
    return [
        name
        for name in list_models()
        if "vectors" in get_model_class(name).supported_inputs and not get_model_class(name).needs_reference_process
    ]


def _parse(text: str, kind: type, description: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {description}") from None
