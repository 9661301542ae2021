"""The fused CPU z2_delta kernels: equal to the unit's torch path (states, final state and every
gradient), and the block's norm and modulation to their torch ops, on awkward lengths, decays near
-1 and near 1 and non-zero initial states; float32 under autocast; replaced by the torch path under a torch function mode, where they are switched off and
where they cannot be built; built with OpenMP where the compiler has it, and rebuilt when the
header they share with the other kernels changes."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from conftest import CountTanh

from models import build_model, cpu_kernel_build, delta_cpu_kernel, scan_cpu_kernel, seam_cpu_kernel
from models.gated_delta import GatedDeltaBlock, GatedDeltaUnit


@pytest.fixture
def kernel():
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine: the fused z2_delta kernels cannot be built")
    fused = delta_cpu_kernel.kernel()
    assert fused is not None, "a compiler exists but the z2_delta kernels did not load (see the logged line)"
    return fused


def _unit(seam: bool, dtype: torch.dtype, regime: str = "random", stream_dim: int = 9, even_dim: int = 7):
    """A unit with random weights (9 and 7 channels, so vector loops have tails). `regime`
    'flipping' opens the seam gate and keeps beta small: odd decays near -1; 'holding' closes the
    seam gate and keeps beta near 0: decays near +1, the slowest-forgetting case."""
    unit = GatedDeltaUnit(stream_dim, even_dim, delta_rank=3, temperature=0.5, seam=seam)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unit.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
        if regime != "random":
            rows = unit.num_seam_scores
            unit.from_invariants.weight.mul_(0.01)
            unit.from_invariants.bias[rows : rows + stream_dim + even_dim] = -6.0  # beta ~ 0.0025
            if seam:
                unit.from_invariants.bias[0] = (7.0 if regime == "flipping" else -7.0) * unit.temperature
    return unit.to(dtype)


def _leaves(unit: GatedDeltaUnit, batch: int, steps: int, dtype: torch.dtype, with_state: bool):
    generator = torch.Generator().manual_seed(1)
    sizes = [(batch, steps, unit.stream_dim)]
    if with_state:
        sizes += [(batch, unit.stream_dim), (batch, unit.even_dim), (batch, unit.stream_dim)]
    return [torch.randn(size, generator=generator, dtype=dtype).requires_grad_() for size in sizes]


def _run_and_differentiate(unit: GatedDeltaUnit, leaves, kernel):
    """The states, the final state and the gradients of a random weighting of all of them w.r.t.
    the input, the initial state and every parameter, through `kernel` (None: the torch path)."""
    u, *state = leaves
    h_odd, h_even, final_state, _ = unit.states(u, tuple(state) or None, kernel)
    values = [h_odd, h_even, *final_state]
    generator = torch.Generator().manual_seed(2)
    weighted = sum((v * torch.randn(v.shape, generator=generator, dtype=v.dtype)).sum() for v in values)
    return values + list(torch.autograd.grad(weighted, [*leaves, *unit.parameters()]))


def _names(unit: GatedDeltaUnit, with_state: bool) -> list[str]:
    names = ["h_odd", "h_even", "final h_odd", "final h_even", "final u", "grad u"]
    names += ["grad h_odd0", "grad h_even0", "grad u_before"] if with_state else []
    return names + [f"grad {name}" for name, _ in unit.named_parameters()]


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _check_equal(kernel, seam, regime, batch, steps, dtype, with_state):
    unit = _unit(seam, dtype, regime)
    leaves = _leaves(unit, batch, steps, dtype, with_state)
    fused = _run_and_differentiate(unit, leaves, kernel)
    reference = _run_and_differentiate(unit, leaves, None)
    for name, value, expected in zip(_names(unit, with_state), fused, reference):
        assert value.dtype == expected.dtype == dtype, name
        if dtype == torch.float64:
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12, msg=name)
        else:
            assert _rel_err(value, expected) <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [1, 2, 63, 100, 1000])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("seam", [True, False])
def test_the_kernels_equal_the_torch_path(kernel, seam, with_state, steps, dtype):
    _check_equal(kernel, seam, "random", 3, steps, dtype, with_state)


@pytest.mark.parametrize("regime", ["flipping", "holding"])
@pytest.mark.parametrize("steps", [4097])
def test_the_kernels_equal_the_torch_path_on_long_sequences_near_the_unit_decays(kernel, regime, steps):
    unit = _unit(True, torch.float64, regime)
    decays = unit.odd_decays(_leaves(unit, 1, 50, torch.float64, False)[0])
    if regime == "flipping":
        assert decays.max() < -0.99
    else:
        assert decays.min() > 0.99
    _check_equal(kernel, True, regime, 2, steps, torch.float64, with_state=True)
    _check_equal(kernel, True, regime, 2, steps, torch.float32, with_state=True)


def test_one_row_and_wide_batches_split_over_threads_agree(kernel):
    # 64 rows x 200 steps split over the threads; one row runs on one thread.
    _check_equal(kernel, True, "random", 64, 200, torch.float64, with_state=True)
    _check_equal(kernel, True, "random", 1, 200, torch.float64, with_state=False)


def _block(dtype: torch.dtype) -> GatedDeltaBlock:
    """A block with random weights (9 odd and 7 even channels, so vector loops have tails)."""
    block = GatedDeltaBlock(9, 7, delta_rank=3, temperature=0.5, seam=True, seam_gate_init=0.05, use_parallel_scan=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return block.to(dtype)


def _run_block(block: GatedDeltaBlock, leaves, fused: bool, monkeypatch):
    """The block's output and final state, and the gradients of a random weighting of them w.r.t.
    its input, initial state and parameters, with its unit's kernels on (`fused`) or off."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(block.unit, "fused_kernel", lambda u: None)
        stream, *state = leaves
        out, _, final_state = block(stream, tuple(state), with_diagnostics=False)
    values = [out, *final_state]
    generator = torch.Generator().manual_seed(4)
    weighted = sum((v * torch.randn(v.shape, generator=generator, dtype=v.dtype)).sum() for v in values)
    return values + list(torch.autograd.grad(weighted, [*leaves, *block.parameters()]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [1, 2, 63, 100, 1000, 4097])
def test_the_block_with_its_norm_and_modulation_kernels_equals_its_torch_ops(kernel, steps, dtype, monkeypatch):
    block = _block(dtype)
    generator = torch.Generator().manual_seed(5)
    sizes = [(2, steps, 9), (2, 9), (2, 7), (2, 9)]
    leaves = [(2.0 * torch.randn(size, generator=generator, dtype=dtype)).requires_grad_() for size in sizes]
    fused = _run_block(block, leaves, True, monkeypatch)
    reference = _run_block(block, leaves, False, monkeypatch)
    names = ["out", "final h_odd", "final h_even", "final u", "grad stream", "grad h_odd0", "grad h_even0"]
    names += ["grad u_before"] + [f"grad {name}" for name, _ in block.named_parameters()]
    for name, value, expected in zip(names, fused, reference, strict=True):
        assert value.dtype == expected.dtype == dtype, name
        if dtype == torch.float64:
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12, msg=name)
        else:
            assert _rel_err(value, expected) <= 1e-5, name


@pytest.mark.parametrize("eps", [None, 1e-2])
def test_the_norm_kernel_is_torch_rms_norm_with_its_machine_epsilon_default(kernel, eps):
    x = torch.randn(3, 17, 9, dtype=torch.float32)
    x[0, 0] = 0.0  # a zero row: only eps keeps it finite
    x.requires_grad_()
    weight = torch.randn(9).requires_grad_()
    fused = delta_cpu_kernel.rms_norm(kernel, x, weight, eps)
    expected = torch.nn.functional.rms_norm(x, (9,), weight, eps)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(fused)
    for got, want in zip(
        torch.autograd.grad(fused, [x, weight], grad), torch.autograd.grad(expected, [x, weight], grad)
    ):
        assert _rel_err(got, want) <= 1e-5


def test_the_modulation_kernel_saturates_like_the_sigmoid(kernel):
    # Modulations far past the sigmoid's range (where exp is clamped) give 0 and h, and 0 gradients there.
    h = torch.randn(2, 300, 9).requires_grad_()
    modulation = torch.randn(2, 300, 9) * 60.0
    modulation.requires_grad_()
    fused = delta_cpu_kernel.modulated(kernel, h, modulation)
    expected = h * torch.sigmoid(modulation)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-30)
    grad = torch.randn_like(fused)
    pairs = zip(torch.autograd.grad(fused, [h, modulation], grad), torch.autograd.grad(expected, [h, modulation], grad))
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-30)


def test_the_model_takes_the_fused_path_on_cpu(kernel, monkeypatch):
    model = build_model("z2_delta", input_dim=4, hidden_dim=16, num_layers=2)
    calls = []
    original = delta_cpu_kernel.DeltaKernel.call
    monkeypatch.setattr(
        delta_cpu_kernel.DeltaKernel,
        "call",
        lambda self, name, *rest: calls.append(name) or original(self, name, *rest),
    )
    model(torch.randn(2, 10, 4)).sum().backward()
    assert calls.count("scan_forward") == calls.count("scan_backward") == 2
    assert calls.count("features_forward") == calls.count("features_backward") == 2
    assert calls.count("norm_forward") == calls.count("norm_backward") == 2
    assert calls.count("modulate_forward") == calls.count("modulate_backward") == 2


def test_under_cpu_autocast_the_kernels_run_in_float32(kernel):
    model = build_model("z2_delta", input_dim=4, hidden_dim=16)
    x = torch.randn(2, 20, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(x, return_diagnostics=True)
        torch_path = _torch_path_only(model)(x, return_diagnostics=True)
    assert fused[0].dtype == torch_path[0].dtype
    torch.testing.assert_close(fused[0], torch_path[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused[1]["gate"], torch_path[1]["gate"], rtol=0, atol=0)


def _torch_path_only(model):
    """The model with its units on their torch path."""
    for module in model.modules():
        if isinstance(module, GatedDeltaUnit):
            module.fused_kernel = lambda u: None
    return model


def test_a_torch_function_mode_sees_the_torch_path(kernel):
    # The audit's gate recorder reads the gate sigmoids and tanhs; the kernels would hide them.
    model = build_model("z2_delta", input_dim=4, hidden_dim=16)
    x = torch.randn(2, 7, 4)
    expected = model(x)
    with CountTanh() as mode:
        out = model(x)
    assert mode.calls == 1  # the even candidate of the one block
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "z2_delta: fused CPU kernel unavailable" in r.getMessage()]


def test_a_failed_build_falls_back_to_the_torch_path_with_one_logged_line(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernel_build, "compiler", lambda: "/nonexistent/c++")
    model = build_model("z2_delta", input_dim=4, hidden_dim=16).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger=delta_cpu_kernel.__name__):
        outputs = [model(x) for _ in range(3)]
    assert len(_fallback_lines(caplog)) == 1 and "/nonexistent/c++" in _fallback_lines(caplog)[0]
    reference = build_model("z2_delta", input_dim=4, hidden_dim=16, use_parallel_scan=False).double()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(outputs[0], reference(x), rtol=1e-10, atol=1e-12)


# (kernel entry, which of its tensors to spoil, the refusal): the unit's h_even, the norm's grad_x,
# the modulated state.
@pytest.mark.parametrize(
    "entry, spoiled, refusal",
    [
        ("scan_forward", -1, "self-check failed: output 1 (seam=True, state=False)"),
        ("norm_backward", -2, "of the block's norm does not match its torch ops"),
        ("modulate_forward", -1, "of the block's modulation does not match its torch ops"),
    ],
)
def test_kernels_that_disagree_with_their_torch_path_are_not_used(monkeypatch, caplog, entry, spoiled, refusal):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    right = delta_cpu_kernel.DeltaKernel.call

    def off_by_a_little(self, name, tensors, shape):
        right(self, name, tensors, shape)
        if name == entry:
            tensors[spoiled].mul_(1.001)

    monkeypatch.setattr(delta_cpu_kernel.DeltaKernel, "call", off_by_a_little)
    delta_cpu_kernel.kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=delta_cpu_kernel.__name__):
            assert delta_cpu_kernel.kernel() is None
    finally:
        delta_cpu_kernel.kernel.cache_clear()
    assert refusal in _fallback_lines(caplog)[0]


def test_the_environment_switch_selects_the_torch_path_without_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("SEAM_DELTA_KERNEL", "eager")
    delta_cpu_kernel.kernel.cache_clear()
    try:
        model = build_model("z2_delta", input_dim=4, hidden_dim=16)
        monkeypatch.setattr(delta_cpu_kernel.DeltaKernel, "call", _refuse_call)
        with caplog.at_level(logging.WARNING, logger=delta_cpu_kernel.__name__):
            model(torch.randn(2, 5, 4)).sum().backward()
            assert delta_cpu_kernel.kernel() is None
    finally:
        delta_cpu_kernel.kernel.cache_clear()
    assert not _fallback_lines(caplog)


def _refuse_call(*args, **kwargs):
    raise AssertionError("a fused z2_delta kernel ran although the kernels are switched off")


def test_the_kernels_are_built_with_openmp_and_without_it_where_the_compiler_refuses(fresh_kernel, monkeypatch):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    run = cpu_kernel_build.subprocess.run
    commands = []

    def without_openmp(command, **kwargs):
        commands.append(command)
        if cpu_kernel_build.OPENMP in command:
            return run(["false"], **kwargs)
        return run(command, **kwargs)

    monkeypatch.setattr(cpu_kernel_build.subprocess, "run", without_openmp)
    assert delta_cpu_kernel.kernel() is not None  # built, and self-checked, without OpenMP
    delta_builds = [command for command in commands if str(delta_cpu_kernel.SOURCE) in command]
    assert [cpu_kernel_build.OPENMP in command for command in delta_builds] == [True, False]


def test_an_edit_of_the_shared_header_rebuilds_the_kernel(tmp_path, monkeypatch):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("SEAM_SCAN_CACHE", str(tmp_path / "cache"))
    sources = tmp_path / "models"
    sources.mkdir()
    for path in (delta_cpu_kernel.SOURCE, delta_cpu_kernel.SOURCE.with_name("cpu_kernel.h")):
        shutil.copy(path, sources / path.name)
    first = cpu_kernel_build.build_library(sources / delta_cpu_kernel.SOURCE.name)
    with open(sources / "cpu_kernel.h", "a") as header:
        header.write("// an edit\n")
    second = cpu_kernel_build.build_library(sources / delta_cpu_kernel.SOURCE.name)
    assert first != second and first.exists() and second.exists()


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients(kernel):
    # The first backward writes the gradients over the pre-activation buffers; the second recomputes them.
    unit = _unit(True, torch.float64)
    u, *state = _leaves(unit, 2, 30, torch.float64, with_state=True)
    h_odd, h_even, _, _ = unit.states(u, tuple(state), kernel)
    loss = (h_odd.sin().sum() + h_even.cos().sum()) * 0.5
    first = torch.autograd.grad(loss, [u, *state, *unit.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [u, *state, *unit.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_steps_reuse_the_pre_activation_buffers(kernel, monkeypatch):
    model = build_model("z2_delta", input_dim=4, hidden_dim=16)
    x = torch.randn(3, 50, 4)
    model(x).sum().backward()
    given_back = {buffer.data_ptr() for buffers in delta_cpu_kernel.WORKSPACE._free.values() for buffer in buffers}
    taken = []
    take = delta_cpu_kernel.WORKSPACE.take
    monkeypatch.setattr(delta_cpu_kernel.WORKSPACE, "take", lambda *args: taken.append(take(*args)) or taken[-1])
    model(x).sum().backward()
    assert len(taken) == 2 and {buffer.data_ptr() for buffer in taken} <= given_back


def test_every_kernel_loads_when_first_needed_under_inference_mode(fresh_kernel):
    # Its self-check differentiates; a first call from evaluation code must not disable the kernel.
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    with torch.inference_mode():
        for module in (delta_cpu_kernel, seam_cpu_kernel, scan_cpu_kernel):
            assert module.kernel() is not None, module.__name__
