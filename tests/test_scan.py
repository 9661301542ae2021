"""linear_scan: every backend (the fused CPU kernel, the eager chunked scan and, on a CUDA machine, the
Triton kernel) matches the float64 reference loop in value and gradient, composes, stays fp32 under
autocast; the CPU kernel falls back."""

from __future__ import annotations

import logging

import pytest
import torch

from models import cpu_kernel_build, scan, scan_cpu_kernel, scan_triton
from models.scan import EagerScan, linear_scan, linear_scan_reference


@pytest.fixture(params=["fused", "fused-streaming", "eager", pytest.param("triton", marks=pytest.mark.gpu)])
def device(request, monkeypatch) -> torch.device:
    """Run the test once through each backend that linear_scan can dispatch to: the device whose
    tensors take it (the CPU for the C++ kernel and the eager scan, CUDA for the Triton kernel).
    `fused-streaming` runs the C++ kernel with the non-temporal stores it uses for large tensors."""
    if request.param.startswith("fused"):
        if cpu_kernel_build.compiler() is None:
            pytest.skip("no C++ compiler on this machine: the fused kernel cannot be built")
        fused = scan_cpu_kernel.kernel()
        assert fused is not None, "a compiler exists but the fused kernel did not build (see the logged line)"
        assert scan.select_backend(torch.zeros(1)) is fused
        if request.param == "fused-streaming":
            monkeypatch.setattr(scan_cpu_kernel, "STREAM_BYTES", 0)
            assert scan_cpu_kernel.streams_outputs(torch.zeros(1))
    elif request.param == "triton":
        pytest.importorskip("triton", reason="the CUDA scan kernel needs triton (pip install -e '.[gpu]')")
        compiled = scan_triton.kernel()
        assert compiled is not None, (
            "triton and CUDA are present but the Triton kernel did not load (see the logged line)"
        )
        assert scan.select_backend(torch.zeros(1, device="cuda")) is compiled
        return torch.device("cuda")
    else:
        monkeypatch.setattr(scan, "select_backend", lambda x: EagerScan)
    return torch.device("cpu")


def _leaves(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors moved to `device` as leaves that require grad."""
    return tuple(t.to(device).requires_grad_() for t in tensors)


def _float64_reference(a, b, h0=None) -> tuple[torch.Tensor, ...]:
    """Float64 CPU leaves of the (detached) inputs, for linear_scan_reference."""
    return tuple(None if t is None else t.detach().cpu().double().requires_grad_() for t in (a, b, h0))


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    return ((x - ref).norm() / ref.norm()).item()


def _gates(regime: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator)
    if regime == "uniform":
        return 2 * u - 1
    if regime == "near_zero":
        return (2 * u - 1) * 1e-3
    if regime == "near_one":
        return 1 - 1e-3 * u
    raise ValueError(regime)


@pytest.mark.parametrize("regime", ["uniform", "near_zero", "near_one"])
@pytest.mark.parametrize("T", [1, 2, 63, 100, 1000, 4097])
def test_value_and_gradients_match_float64_reference(T, regime, device):
    generator = torch.Generator().manual_seed(T)
    B, H = 3, 4
    a, b, h0 = _leaves(
        device,
        _gates(regime, (B, T, H), generator),
        torch.randn(B, T, H, generator=generator),
        torch.randn(B, H, generator=generator),
    )
    upstream = torch.randn(B, T, H, generator=generator)

    h = linear_scan(a, b, h0)
    grads = torch.autograd.grad(h, (a, b, h0), upstream.to(device))

    a64, b64, h064 = _float64_reference(a, b, h0)
    ref = linear_scan_reference(a64, b64, h064)
    ref_grads = torch.autograd.grad(ref, (a64, b64, h064), upstream.double())

    assert h.dtype == torch.float32
    assert _rel_err(h, ref) <= 1e-5
    for name, grad, ref_grad in zip(("a", "b", "h0"), grads, ref_grads):
        assert grad.dtype == torch.float32
        assert _rel_err(grad, ref_grad) <= 1e-5, name


# Prime T >= 16 is never a whole number of chunks, so those exercise the ragged tail;
# T < 16 takes the plain loop.
@pytest.mark.parametrize("T", [1, 3, 18, 23, 37, 50])
def test_gradcheck_float64(T, device):
    generator = torch.Generator().manual_seed(T)
    a, b, h0 = _leaves(
        device,
        2 * torch.rand(2, T, 3, generator=generator, dtype=torch.float64) - 1,
        torch.randn(2, T, 3, generator=generator, dtype=torch.float64),
        torch.randn(2, 3, generator=generator, dtype=torch.float64),
    )
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b), (a, b))


def test_float64_inputs_stay_float64(device):
    a = torch.rand(2, 40, 3, dtype=torch.float64, device=device)
    b = torch.randn(2, 40, 3, dtype=torch.float64, device=device)
    h = linear_scan(a, b)
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, linear_scan_reference(a, b), rtol=1e-12, atol=1e-12)


def test_zero_h0_equals_no_h0(device):
    a, b = torch.rand(2, 50, 3, device=device) * 2 - 1, torch.randn(2, 50, 3, device=device)
    torch.testing.assert_close(linear_scan(a, b), linear_scan(a, b, torch.zeros(2, 3, device=device)), rtol=0, atol=0)


def test_two_halves_with_carried_state_equal_one_call(device):
    generator = torch.Generator().manual_seed(0)
    a = (2 * torch.rand(4, 301, 8, generator=generator) - 1).to(device)
    b = torch.randn(4, 301, 8, generator=generator).to(device)
    h0 = torch.randn(4, 8, generator=generator).to(device)
    whole = linear_scan(a, b, h0)
    first = linear_scan(a[:, :137], b[:, :137], h0)
    second = linear_scan(a[:, 137:], b[:, 137:], first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)


def test_non_contiguous_inputs(device):
    a = (torch.rand(5, 4, 70, device=device) * 2 - 1).transpose(1, 2)
    b = torch.randn(5, 4, 70, device=device).transpose(1, 2)
    h0 = torch.randn(4, 5, device=device).t()
    assert not a.is_contiguous() and not h0.is_contiguous()
    ref = linear_scan_reference(*_float64_reference(a, b, h0))
    assert _rel_err(linear_scan(a, b, h0), ref) <= 1e-5


def test_autocast_bf16_computes_in_float32_and_returns_input_dtype(device):
    generator = torch.Generator().manual_seed(0)
    B, T, H = 4, 1000, 8
    a, b = _leaves(
        device,
        (1 - 0.02 * torch.rand(B, T, H, generator=generator)).bfloat16(),
        torch.randn(B, T, H, generator=generator).bfloat16(),
    )
    h0 = torch.randn(B, H, generator=generator).bfloat16().to(device)

    with torch.autocast(device.type, dtype=torch.bfloat16):
        h = linear_scan(a, b, h0)
    assert h.dtype == torch.bfloat16
    # The fp32 scan on the upcast inputs, rounded to bf16 once at the end.
    fp32_once = linear_scan(a.detach().float(), b.detach().float(), h0.float()).bfloat16()
    assert torch.equal(h, fp32_once)

    state, bf16_states = h0, []
    for a_t, b_t in zip(a.detach().unbind(1), b.detach().unbind(1)):
        state = a_t * state + b_t
        bf16_states.append(state)
    ref = linear_scan_reference(*_float64_reference(a, b, h0))
    err_scan = _rel_err(h, ref)
    err_bf16_loop = _rel_err(torch.stack(bf16_states, dim=1), ref)
    assert err_scan <= 4e-3  # one bf16 rounding
    assert err_scan < 0.1 * err_bf16_loop

    h.float().sum().backward()
    assert a.grad.dtype == torch.bfloat16 and b.grad.dtype == torch.bfloat16


def test_autocast_leaves_float32_inputs_in_float32(device):
    a, b = torch.rand(2, 64, 3, device=device) * 2 - 1, torch.randn(2, 64, 3, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        h = linear_scan(a, b)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, linear_scan(a, b), rtol=0, atol=0)


@pytest.mark.parametrize(
    "a_shape, b_shape, h0_shape, argument",
    [
        ((2, 5), (2, 5), None, "a has shape (2, 5) but must be 3-D"),
        ((2, 5, 3), (2, 5, 3, 1), None, "b has shape (2, 5, 3, 1) but must be 3-D"),
        ((2, 5, 3), (2, 5, 4), None, "a has shape (2, 5, 3) but b has shape (2, 5, 4); they must match as (B, T, H)."),
        ((2, 0, 3), (2, 0, 3), None, "a and b have shape (2, 0, 3) but need at least one time step"),
        ((2, 5, 3), (2, 5, 3), (3, 3), "h0 has shape (3, 3) but must be (B, H) = (2, 3)."),
        ((2, 5, 3), (2, 5, 3), (2, 5, 3), "h0 has shape (2, 5, 3) but must be (B, H) = (2, 3)."),
    ],
)
def test_shape_errors_name_the_argument(a_shape, b_shape, h0_shape, argument):
    h0 = None if h0_shape is None else torch.zeros(h0_shape)
    with pytest.raises(ValueError) as error:
        linear_scan(torch.zeros(a_shape), torch.zeros(b_shape), h0)
    assert str(error.value).startswith("linear_scan: ")
    assert argument in str(error.value)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="a has dtype torch.int64"):
        linear_scan(torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5, 3))


def _graph_nodes(fn) -> int:
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_backward_is_one_node_not_one_per_step(device):
    counts = []
    for T in (10, 2000):
        a, b, h0 = _leaves(device, torch.rand(2, T, 3), torch.randn(2, T, 3), torch.randn(2, 3))
        h = linear_scan(a, b, h0)
        assert h.grad_fn.name() == "_LinearScanBackward"
        counts.append(_graph_nodes(h.grad_fn))
    # The scan node plus one AccumulateGrad per input, whatever T is.
    assert counts == [4, 4]


def test_no_graph_when_no_input_requires_grad():
    assert linear_scan(torch.rand(2, 30, 3), torch.randn(2, 30, 3)).grad_fn is None


def test_gradient_of_b_alone_skips_grad_a_and_matches_the_reference(device):
    generator = torch.Generator().manual_seed(1)
    a = (2 * torch.rand(2, 40, 3, generator=generator) - 1).to(device)
    (b,) = _leaves(device, torch.randn(2, 40, 3, generator=generator))
    h0 = torch.randn(2, 3, generator=generator).to(device)
    (grad_b,) = torch.autograd.grad(linear_scan(a, b, h0).sum(), (b,))
    _, b64, _ = _float64_reference(a, b)
    (ref_grad_b,) = torch.autograd.grad(linear_scan_reference(a.cpu(), b64, h0.cpu()).sum(), (b64,))
    assert _rel_err(grad_b, ref_grad_b) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H", [5, 37, 300])  # rows not a whole number of vectors; two channel blocks
def test_streaming_stores_change_no_bit(H, dtype):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    fused = scan_cpu_kernel.kernel()
    generator = torch.Generator().manual_seed(H)
    a = (2 * torch.rand(3, 41, H, generator=generator) - 1).to(dtype)
    b, upstream = (torch.randn(3, 41, H, generator=generator).to(dtype) for _ in range(2))
    h0 = torch.randn(3, H, generator=generator).to(dtype)
    for start in (h0, None):
        cached, streamed = (fused.forward(a, b, start, stream=stream) for stream in (False, True))
        assert torch.equal(cached, streamed)
        for need_a in (True, False):
            cached_grads = fused.backward(a, cached, start, upstream, need_a, stream=False)
            streamed_grads = fused.backward(a, cached, start, upstream, need_a, stream=True)
            for expected, got in zip(cached_grads, streamed_grads):
                assert (expected is None and got is None) or torch.equal(expected, got)


def test_large_outputs_are_streamed_and_small_ones_are_not():
    limit = scan_cpu_kernel.STREAM_BYTES
    assert scan_cpu_kernel.streams_outputs(torch.empty(limit // 4, dtype=torch.float32))
    assert not scan_cpu_kernel.streams_outputs(torch.empty(limit // 8 - 1, dtype=torch.float64))


@pytest.fixture
def reloaded_kernel():
    """No loaded kernel (the built library in the cache is reused); reloaded afterwards."""
    scan_cpu_kernel.kernel.cache_clear()
    yield
    scan_cpu_kernel.kernel.cache_clear()


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fused CPU kernel unavailable" in r.getMessage()]


def test_failed_build_falls_back_to_the_eager_scan_with_one_logged_line(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernel_build, "compiler", lambda: "/nonexistent/c++")
    generator = torch.Generator().manual_seed(0)
    a = (2 * torch.rand(2, 100, 3, generator=generator) - 1).requires_grad_()
    b = torch.randn(2, 100, 3, generator=generator)
    with caplog.at_level(logging.WARNING, logger=scan_cpu_kernel.__name__):
        for _ in range(3):
            h = linear_scan(a, b)
    assert scan.select_backend(b) is EagerScan
    assert len(_fallback_lines(caplog)) == 1
    assert "/nonexistent/c++" in _fallback_lines(caplog)[0]
    ref_a = a.detach().double().requires_grad_()
    ref = linear_scan_reference(ref_a, b)
    assert _rel_err(h, ref) <= 1e-5
    (grad_a,) = torch.autograd.grad(h.sum(), (a,))
    assert _rel_err(grad_a, torch.autograd.grad(ref.sum(), (ref_a,))[0]) <= 1e-5


def test_missing_compiler_falls_back(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernel_build, "compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger=scan_cpu_kernel.__name__):
        assert scan.select_backend(torch.zeros(1)) is EagerScan
    assert "no C++ compiler found" in _fallback_lines(caplog)[0]


def test_a_kernel_that_disagrees_with_the_reference_is_not_used(reloaded_kernel, monkeypatch, caplog):
    wrong = scan_cpu_kernel.ScanKernel.forward
    monkeypatch.setattr(scan_cpu_kernel.ScanKernel, "forward", lambda self, a, b, h0: 1.001 * wrong(self, a, b, h0))
    with caplog.at_level(logging.WARNING, logger=scan_cpu_kernel.__name__):
        assert scan.select_backend(torch.zeros(1)) is EagerScan
    assert "self-check failed: h differs" in _fallback_lines(caplog)[0]


def test_environment_switch_selects_the_eager_scan(reloaded_kernel, monkeypatch, caplog):
    monkeypatch.setenv("SEAM_SCAN_KERNEL", "eager")
    with caplog.at_level(logging.WARNING, logger=scan_cpu_kernel.__name__):
        assert scan.select_backend(torch.zeros(1)) is EagerScan
    assert not _fallback_lines(caplog)


def test_the_library_is_built_once_and_reused_from_the_cache(monkeypatch):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    first = cpu_kernel_build.build_library(scan_cpu_kernel.SOURCE)
    assert first.parent == cpu_kernel_build.cache_dir() and first.exists()

    # The second call finds the library under the same key and must not run the compiler.
    def no_build(*args, **kwargs):
        raise AssertionError("compiled again although the library is cached")

    monkeypatch.setattr(cpu_kernel_build.subprocess, "run", no_build)
    assert cpu_kernel_build.build_library(scan_cpu_kernel.SOURCE) == first
