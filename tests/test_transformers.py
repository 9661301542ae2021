"""The transformers: causality, the latent-token layout and its zero loss, GPT-style init, gradient
checkpointing, option errors; greedy decoding, scheduled sampling and the seq2seq metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import models.latent_transformer as latent_transformer
from data.datamodule import IGNORE_INDEX
from data.multiplication import MultiplicationDataModule, MultiplicationTokenizer
from lightning_module import SeamGatedLightningModule
from models import build_model
from train_hydra import train
from training.decoding import greedy_decode, mix_in_predictions, scheduled_sampling_rate
from training.metrics import Seq2SeqMetrics
from training.objectives import ClassificationObjective, RegressionObjective, Seq2SeqObjective

TOKENIZER = MultiplicationTokenizer()
VOCAB, SEPARATOR = len(TOKENIZER), TOKENIZER.separator_id
SMALL = {"d_model": 16, "num_layers": 2, "num_heads": 2, "max_length": 40}


def token_model(name: str, **kwargs) -> nn.Module:
    extra = {"separator_token": SEPARATOR, "num_latent_tokens": 3} if name == "latent_transformer" else {}
    torch.manual_seed(0)
    return build_model(name, vocab_size=VOCAB, output_dim=VOCAB, **SMALL, **extra, **kwargs).eval()


def prompts_with_separator(batch: int, length: int, separator_at: list[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 10, (batch, length), generator=generator)
    x[torch.arange(batch), torch.tensor(separator_at)] = SEPARATOR
    return x


@pytest.mark.parametrize("name", ["transformer", "latent_transformer"])
def test_changing_tokens_after_t_never_changes_outputs_up_to_t(name):
    model = token_model(name)
    length, separator_at = 14, [5, 9, 2, 12]
    x = prompts_with_separator(4, length, separator_at)
    reference = model(x)
    generator = torch.Generator().manual_seed(1)
    for t in range(length - 1):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randint(0, VOCAB, (4, length - t - 1), generator=generator)
        # Keep a separator in every row (the latent model needs one); moving it after t is allowed.
        has_separator = (changed == SEPARATOR).any(dim=1)
        changed[~has_separator, -1] = SEPARATOR
        torch.testing.assert_close(model(changed)[:, : t + 1], reference[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(model(changed)[:, t + 1 :], reference[:, t + 1 :])


@pytest.mark.parametrize("name", ["transformer", "latent_transformer"])
def test_vector_inputs_are_causal_too(name):
    torch.manual_seed(0)
    model = build_model(name, input_dim=4, output_dim=4, **SMALL).eval()
    x = torch.randn(3, 10, 4)
    prediction, diagnostics = model(x, return_diagnostics=True)
    assert prediction.shape == (3, 10, 4) and diagnostics == {}
    changed = x.clone()
    changed[:, 6:] = torch.randn(3, 4, 4)
    torch.testing.assert_close(model(changed)[:, :6], prediction[:, :6], rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["transformer", "latent_transformer"])
def test_both_transformers_model_text(make_config, model):
    record = train(
        make_config(
            [
                f"model={model}",
                "data=text",
                "data.corpus_characters=20000",
                "data.sequence_length=50",
                "debug=fdr",
                "model.d_model=32",
                "model.num_heads=2",
            ]
        )
    )
    assert {"val/loss", "val/perplexity", "val/accuracy", "test/perplexity"} <= set(record["metrics"])
    assert all(math.isfinite(value) for value in record["metrics"].values())


def final_block_states(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output and the output of its last block (the full internal sequence, grad retained)."""
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["states"] = output

    handle = model.blocks[-1].register_forward_hook(keep)
    output = model(x)
    handle.remove()
    return output, captured["states"]


def test_latent_sequence_is_longer_by_exactly_k_with_the_latents_before_the_separator():
    x = prompts_with_separator(3, 11, [4, 7, 1])
    plain_output, plain_states = final_block_states(token_model("transformer"), x)
    latent = token_model("latent_transformer")
    latent_output, latent_states = final_block_states(latent, x)
    k = latent.num_latent_tokens
    assert plain_states.shape[1] == 11 and latent_states.shape[1] == 11 + k
    assert plain_output.shape == latent_output.shape == (3, 11, VOCAB)
    sequence, input_positions = latent.insert_latents(latent.input(x), latent.latent_insertion_points(x))
    for row, separator in enumerate([4, 7, 1]):
        torch.testing.assert_close(sequence[row, separator : separator + k], latent.latent_tokens)
        expected = [t if t < separator else t + k for t in range(11)]
        assert input_positions[row].tolist() == expected


def test_latent_positions_carry_zero_loss():
    datamodule = MultiplicationDataModule(min_digits=1, max_digits=2, num_pairs=200, batch_size=16, seed=3)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    module = SeamGatedLightningModule(
        "latent_transformer",
        {**SMALL, "num_latent_tokens": 4, "separator_token": SEPARATOR},
        task="seq2seq",
        target_mode="next_step",
        vocab_size=VOCAB,
        output_dim=VOCAB,
    )
    k = module.model.num_latent_tokens
    captured: list[torch.Tensor] = []

    def keep(block, inputs, output):
        output.retain_grad()
        captured.append(output)

    module.model.blocks[-1].register_forward_hook(keep)
    module.objective.training_loss(module.scored_prediction, batch, progress=0.0)[0].backward()
    gradient = captured[0].grad.abs().sum(-1)  # (B, T + K)
    separator_at = (batch["x"] == SEPARATOR).int().argmax(1)
    for row, separator in enumerate(separator_at.tolist()):
        assert gradient[row, separator : separator + k].eq(0).all()  # the latent positions
        assert gradient[row, separator + k].gt(0)  # the separator itself predicts the first answer digit


def test_gpt_style_initialisation():
    torch.manual_seed(0)
    model = build_model(
        "latent_transformer",
        vocab_size=VOCAB,
        output_dim=VOCAB,
        d_model=256,
        num_layers=8,
        num_heads=4,
        num_latent_tokens=16,
    )
    residual_std = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attention.out.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp[2].weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.attention.qkv.bias.eq(0).all() and block.attention_norm.weight.eq(1).all()
    for table in (model.input.weight, model.positions, model.latent_tokens, model.head.weight):
        assert table.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("name", ["transformer", "latent_transformer"])
def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_gradients(name, monkeypatch):
    calls = []
    real_checkpoint = latent_transformer.checkpoint
    monkeypatch.setattr(latent_transformer, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    x = prompts_with_separator(4, 12, [3, 5, 7, 9])
    gradients = []
    for enabled in (False, True):
        model = token_model(name, gradient_checkpointing=enabled).train()
        model(x).square().mean().backward()
        gradients.append([p.grad for p in model.parameters()])
    assert len(calls) == SMALL["num_layers"]  # one per block, only in the checkpointed training pass
    for plain, recomputed in zip(*gradients):
        torch.testing.assert_close(plain, recomputed)
    with torch.no_grad():
        token_model(name, gradient_checkpointing=True).train()(x)
    assert len(calls) == SMALL["num_layers"]  # nothing to recompute without gradients


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_model": 30, "num_heads": 4}, "d_model=30 is not allowed; it must be a multiple of num_heads=4."),
        ({"num_layers": 0}, "num_layers=0 is not allowed; it must be a positive integer."),
        ({"dropout": 1.0}, "dropout=1.0 is not allowed; it must lie in [0, 1)."),
        ({"num_latent_tokens": -1}, "num_latent_tokens=-1 is not allowed; it must be >= 0."),
        (
            {"num_latent_tokens": 40, "max_length": 40},
            "num_latent_tokens=40 is not allowed; it must be below max_length=40",
        ),
        ({"separator_token": VOCAB}, f"separator_token={VOCAB} is not allowed; it must be an id in [0, {VOCAB})."),
    ],
)
def test_bad_options_fail_in_one_sentence_naming_the_option(kwargs, message):
    with pytest.raises(ValueError) as error:
        build_model("latent_transformer", vocab_size=VOCAB, output_dim=VOCAB, **{**SMALL, **kwargs})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_inputs_longer_than_max_length_and_rows_without_separator_are_refused():
    model = token_model("latent_transformer")  # max_length 40, 3 latent tokens
    too_short = r"^max_length=40 is too short for inputs of 38 steps plus 3 latent tokens; raise it to at least 41\.$"
    with pytest.raises(ValueError, match=too_short):
        model(prompts_with_separator(1, 38, [3]))
    with pytest.raises(ValueError, match="^separator_token=11 is missing from some input rows"):
        model(torch.zeros(2, 5, dtype=torch.long))


class NextIdModel(nn.Module):
    """A causal stand-in whose output at t puts all mass on (x[t] + 1) mod V."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x + 1) % VOCAB, VOCAB).float()


class MultiplyingModel(nn.Module):
    """A causal oracle: at every answer position it emits the right digit of a x b, read from the
    prompt (the tokens before the separator) and the answer digits generated so far."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape, VOCAB)
        for row, ids in enumerate(x.tolist()):
            text = TOKENIZER.decode(ids)
            separator = text.index("=")
            a, b = (int(part[::-1]) for part in text[:separator].split("*"))
            prompt, answer = TOKENIZER.problem(a, b)
            for step, digit in enumerate(answer):
                logits[row, separator + step, int(digit)] = 1.0
        return logits


def test_greedy_decoding_feeds_back_its_own_tokens_not_the_true_answer():
    datamodule = MultiplicationDataModule(min_digits=1, max_digits=3, num_pairs=300, batch_size=32, seed=1)
    datamodule.setup()
    batch = next(iter(datamodule.val_dataloader()))
    decoded = greedy_decode(NextIdModel(), batch["x"], batch["y"])
    scored = batch["y"] != IGNORE_INDEX
    assert torch.equal(decoded == IGNORE_INDEX, ~scored)
    for row in range(len(decoded)):
        answer = decoded[row][scored[row]].tolist()
        # From the separator (11) on: 12, 0, 1, 2, ... whatever the true answer is.
        assert answer == [(SEPARATOR + 1 + i) % VOCAB for i in range(len(answer))]


def test_greedy_decoding_produces_well_formed_numbers():
    datamodule = MultiplicationDataModule(min_digits=1, max_digits=3, num_pairs=300, batch_size=64, seed=2)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert len(set((batch["x"] != TOKENIZER.padding_id).sum(1).tolist())) > 1  # prompts of several lengths
    decoded = greedy_decode(MultiplyingModel(), batch["x"], batch["y"])
    for row, (a, b) in enumerate(batch["operands"].tolist()):
        answer = decoded[row][decoded[row] != IGNORE_INDEX]
        assert len(answer) == len(str(a)) + len(str(b))
        assert TOKENIZER.decode_number(answer) == a * b


def test_scheduled_sampling_schedules():
    assert scheduled_sampling_rate("none", 0.9, 0.0, 0.5) == 0.0
    assert scheduled_sampling_rate("linear", 0.0, 0.0, 0.5) == 0.0
    assert scheduled_sampling_rate("linear", 0.5, 0.0, 0.5) == pytest.approx(0.25)
    assert scheduled_sampling_rate("linear", 0.6, 0.2, 0.4) == pytest.approx(0.2)  # half way from 0.2 to 1
    assert scheduled_sampling_rate("linear", 1.0, 0.2, 0.4) == pytest.approx(0.4)
    assert scheduled_sampling_rate("cosine", 0.25, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert scheduled_sampling_rate("cosine", 0.5, 0.0, 0.8) == pytest.approx(0.4)
    assert scheduled_sampling_rate("cosine", 1.0, 0.0, 0.8) == pytest.approx(0.8)
    assert scheduled_sampling_rate("step", 0.29, 0.3, 0.6) == 0.0
    assert scheduled_sampling_rate("step", 0.3, 0.3, 0.6) == 0.6
    assert scheduled_sampling_rate("linear", 0.1, 0.3, 0.6) == 0.0


def test_scheduled_sampling_replaces_only_answer_inputs_at_the_given_rate():
    datamodule = MultiplicationDataModule(min_digits=2, max_digits=3, num_pairs=2000, batch_size=512, seed=4)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    model = NextIdModel()
    scored = batch["y"] != IGNORE_INDEX
    answer_inputs = torch.zeros_like(scored)
    answer_inputs[:, 1:] = scored[:, :-1] & scored[:, 1:]
    torch.manual_seed(0)
    mixed = mix_in_predictions(model, batch["x"], batch["y"], 1.0)
    assert torch.equal(mixed[~answer_inputs], batch["x"][~answer_inputs])  # prompts and padding stay
    predicted = (batch["x"] + 1) % VOCAB
    assert torch.equal(mixed[:, 1:][answer_inputs[:, 1:]], predicted[:, :-1][answer_inputs[:, 1:]])
    half = mix_in_predictions(model, batch["x"], batch["y"], 0.3)
    changed = (half != batch["x"])[answer_inputs].float().mean().item()
    # NextIdModel's guess differs from the true token unless the true digit is its predecessor + 1.
    assert 0.2 < changed < 0.33


def test_seq2seq_metrics_score_exact_match_per_answer_and_accuracy_per_digit():
    target = torch.tensor([[IGNORE_INDEX, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 4, 5]])
    decoded = torch.tensor([[IGNORE_INDEX, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 4, 6]])
    logits = nn.functional.one_hot(target.clamp(min=0), VOCAB).float() * 50
    metrics = Seq2SeqMetrics()
    metrics.update(logits, decoded, target)
    values = metrics.compute_and_reset()
    assert values["exact_match"].item() == pytest.approx(0.5)
    assert values["digit_accuracy"].item() == pytest.approx(4 / 5)
    assert values["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_longer_operand_rows_are_reported_apart():
    objective = Seq2SeqObjective(VOCAB)
    module = SeamGatedLightningModule(
        "transformer", SMALL, task="seq2seq", target_mode="next_step", vocab_size=VOCAB, output_dim=VOCAB
    )
    datamodule = MultiplicationDataModule(
        min_digits=1, max_digits=1, num_pairs=100, num_longer=20, batch_size=64, seed=0
    )
    datamodule.setup()
    for batch in datamodule.test_dataloader():
        objective.update("test", module.scored_prediction, batch)
    values = objective.compute_and_reset("test")
    assert {
        "loss",
        "exact_match",
        "digit_accuracy",
        "loss_longer",
        "exact_match_longer",
        "digit_accuracy_longer",
    } <= set(values)
    objective.update("val", module.scored_prediction, next(iter(datamodule.val_dataloader())))
    assert "loss" in (values := objective.compute_and_reset("val")) and "loss_longer" not in values


@pytest.mark.parametrize(
    "objective, options, message",
    [
        (
            RegressionObjective,
            {"scheduled_sampling": "linear"},
            "scheduled_sampling=linear applies to seq2seq tasks only; leave it at none for regression data.",
        ),
        (
            RegressionObjective,
            {"label_smoothing": 0.1},
            "label_smoothing=0.1 applies to classification and seq2seq tasks only; leave it at 0.0 for regression data.",
        ),
        (
            ClassificationObjective,
            {"sampling_max_rate": 0.5},
            "sampling_max_rate=0.5 applies to seq2seq tasks only; leave it at 0.25 for classification data.",
        ),
        (ClassificationObjective, {"label_smothing": 0.1}, "label_smothing=0.1 is not an option of any objective"),
        (Seq2SeqObjective, {"scheduled_sampling": "exponential"}, "scheduled_sampling='exponential' is not allowed"),
        (
            Seq2SeqObjective,
            {"sampling_max_rate": 0.5},
            "sampling_max_rate=0.5 has no effect with scheduled_sampling='none'",
        ),
        (
            Seq2SeqObjective,
            {"scheduled_sampling": "linear", "sampling_start": 1.0},
            "sampling_start=1.0 must lie in [0, 1).",
        ),
    ],
)
def test_objective_options_of_other_tasks_or_without_effect_are_refused(objective, options, message):
    with pytest.raises(ValueError) as error:
        objective(VOCAB, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_default_objective_options_are_accepted_by_every_task():
    options = {"label_smoothing": 0.0, "scheduled_sampling": "none", "sampling_start": 0.0, "sampling_max_rate": 0.25}
    for objective in (RegressionObjective, ClassificationObjective, Seq2SeqObjective):
        objective(VOCAB, **options)
