"""The benchmarks refuse impossible arguments before timing anything, in one argparse sentence that
names the option: a batch of 0 rows would otherwise time nothing and pass every target."""

from __future__ import annotations

import argparse
import importlib
import sys

import pytest

from benchmarks.cli import non_negative_int, positive_float, positive_int, trained_vector_models


@pytest.mark.parametrize("text, value", [("1", 1), ("4097", 4097)])
def test_positive_int_accepts_counts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "2.5", "x", ""])
def test_positive_int_refuses_what_is_not_a_count(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"at least 1|is not a whole number"):
        positive_int(text)


def test_non_negative_int_allows_zero_only_as_its_floor():
    assert non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="at least 0"):
        non_negative_int("-1")


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "seconds"])
def test_positive_float_refuses_zero_negative_and_non_finite(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)
    assert positive_float("0.5") == 0.5


def test_trained_vector_models_are_the_registered_models_with_a_train_step_on_vectors():
    names = trained_vector_models()
    assert {"z2_seam", "z2_delta", "lstm", "gru"} <= set(names)
    assert "hamilton_imm" not in names  # the Bayes filter has no parameters to train
    assert "convgru" not in names  # reads fields


@pytest.mark.parametrize(
    "module, arguments, option",
    [
        ("bench_scan", ["--batch", "0"], "--batch"),
        ("bench_scan", ["--budget-s", "nan"], "--budget-s"),
        ("bench_models", ["--models", "hamilton_imm"], "--models"),
        ("bench_models", ["--T", "0"], "--T"),
        ("bench_overhead", ["--model", "nope"], "--model"),
        ("bench_overhead", ["--epochs", "0"], "--epochs"),
        ("bench_text", ["--steps", "0"], "--steps"),
        ("convgru_params", ["--kernel-size", "-1"], "--kernel-size"),
    ],
)
def test_each_benchmark_refuses_a_bad_argument_naming_the_option(monkeypatch, capsys, module, arguments, option):
    main = importlib.import_module(f"benchmarks.{module}").main
    monkeypatch.setattr(sys, "argv", [f"{module}.py", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err
