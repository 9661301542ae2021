"""The Triton scan: its kernels match the float64 reference loop in value and gradient under Triton's CPU
interpreter (no GPU needed); select_backend gives CUDA tensors the Triton kernel only once it loaded and
passed its self-check; without triton or CUDA nothing is logged and CPU keeps the C++ kernel; and the
kernels compile to machine code for A100 and H100/H200 GPUs (Triton's bundled compiler, no GPU), the
float32 ones without spilling registers."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import logging
import re
import subprocess
import sys
import types

import pytest
import torch

from models import cpu_kernel_build, scan, scan_cpu_kernel, scan_triton
from models.scan import EagerScan, linear_scan, linear_scan_reference

# select_backend reads only the device, so CUDA dispatch is checked without a GPU.
FAKE_CUDA_TENSOR = types.SimpleNamespace(device=torch.device("cuda"))
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
GATES = {
    "uniform": lambda u: 2 * u - 1,
    "negative": lambda u: -1 + 1e-3 * u,
    "near_one": lambda u: 1 - 1e-3 * u,
}


@contextlib.contextmanager
def _fresh_kernels_module(interpret: bool):
    """models.scan_triton_kernels imported anew, its kernels built for Triton's CPU interpreter or for
    GPUs: triton.jit picks by TRITON_INTERPRET as the module is imported. Afterwards the environment
    and sys.modules are as they were (the module loaded before, if any, is back)."""
    with pytest.MonkeyPatch.context() as patch:
        if interpret:
            patch.setenv("TRITON_INTERPRET", "1")
        else:
            patch.delenv("TRITON_INTERPRET", raising=False)
        patch.delitem(sys.modules, "models.scan_triton_kernels", raising=False)
        try:
            yield importlib.import_module("models.scan_triton_kernels")
        finally:  # also when the caller's checks fail; the monkeypatch puts back only what was there
            sys.modules.pop("models.scan_triton_kernels", None)


@pytest.fixture(scope="module")
def interpreted():
    """A TritonScan over the kernels built for Triton's CPU interpreter. triton itself is imported
    first, as other tests of a session may have done."""
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    with _fresh_kernels_module(interpret=True) as kernels:
        assert isinstance(kernels.scan_forward, InterpretedFunction)
        assert isinstance(kernels.scan_backward, InterpretedFunction)
        yield scan_triton.TritonScan(kernels)


@pytest.fixture
def through_triton(interpreted, monkeypatch):
    """linear_scan dispatches to the interpreted Triton kernels for CPU tensors."""
    monkeypatch.setattr(scan, "select_backend", lambda x: interpreted)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _check_against_reference(B: int, T: int, H: int, regime: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(T)
    a = GATES[regime](torch.rand(B, T, H, generator=generator, dtype=dtype)).requires_grad_()
    b = torch.randn(B, T, H, generator=generator, dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, H, generator=generator, dtype=dtype, requires_grad=True)
    upstream = torch.randn(B, T, H, generator=generator, dtype=dtype)

    h = linear_scan(a, b, h0)
    grads = torch.autograd.grad(h, (a, b, h0), upstream)

    a64, b64, h064 = (x.detach().double().requires_grad_() for x in (a, b, h0))
    ref = linear_scan_reference(a64, b64, h064)
    ref_grads = torch.autograd.grad(ref, (a64, b64, h064), upstream.double())

    assert h.dtype == dtype
    assert _rel_err(h, ref) <= TOLERANCE[dtype]
    for name, grad, ref_grad in zip(("a", "b", "h0"), grads, ref_grads):
        assert grad.dtype == dtype
        assert _rel_err(grad, ref_grad) <= TOLERANCE[dtype], name


# H = 37 is two channel blocks of 32, the second one mostly masked.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("regime", sorted(GATES))
@pytest.mark.parametrize("T", [1, 2, 63, 100])
def test_interpreted_kernels_match_float64_reference(T, regime, dtype, through_triton):
    _check_against_reference(2, T, 37, regime, dtype)


# The interpreter runs every time step as Python: about 1.4 s per case at T=1000 on a 2-core CPU.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpreted_kernels_match_float64_reference_long(dtype, through_triton):
    _check_against_reference(1, 1000, 5, "near_one", dtype)


def test_interpreted_kernels_without_h0_or_grad_a(through_triton):
    generator = torch.Generator().manual_seed(0)
    a = 2 * torch.rand(3, 63, 37, generator=generator, dtype=torch.float64) - 1
    b = torch.randn(3, 63, 37, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 63, 37, generator=generator, dtype=torch.float64)
    h = linear_scan(a, b)
    (grad_b,) = torch.autograd.grad(h, (b,), upstream)
    b64 = b.detach().requires_grad_()
    ref = linear_scan_reference(a, b64)
    (ref_grad_b,) = torch.autograd.grad(ref, (b64,), upstream)
    torch.testing.assert_close(h, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, ref_grad_b, rtol=1e-12, atol=1e-12)


def test_self_check_passes_the_kernels_and_rejects_a_wrong_one(interpreted, monkeypatch):
    cpu = torch.device("cpu")
    scan_triton.self_check(interpreted, cpu)
    wrong = interpreted.backward
    monkeypatch.setattr(
        interpreted, "backward", lambda a, h, h0, g, need_a: tuple(1.001 * x for x in wrong(a, h, h0, g, need_a))
    )
    with pytest.raises(RuntimeError, match="self-check failed: grad_a"):
        scan_triton.self_check(interpreted, cpu)


@pytest.fixture
def fresh_triton_kernel():
    """No loaded Triton kernel before the test, and none kept after it."""
    scan_triton.kernel.cache_clear()
    yield
    scan_triton.kernel.cache_clear()


@pytest.fixture
def cuda_with_fake_triton(fresh_triton_kernel, monkeypatch):
    """A CUDA device is reported and triton and the kernels module import as stand-ins, so kernel()
    goes as far as its self-check without a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake_triton = types.ModuleType("triton")
    fake_triton.__spec__ = importlib.machinery.ModuleSpec("triton", None)
    monkeypatch.setitem(sys.modules, "triton", fake_triton)
    monkeypatch.setitem(sys.modules, "models.scan_triton_kernels", types.ModuleType("models.scan_triton_kernels"))


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Triton scan kernel unavailable" in r.getMessage()]


def test_cuda_uses_the_triton_kernel_once_it_passed_its_self_check(cuda_with_fake_triton, monkeypatch, caplog):
    monkeypatch.setattr(scan_triton, "self_check", lambda candidate, device: None)
    with caplog.at_level(logging.WARNING, logger=scan_triton.__name__):
        loaded = scan_triton.kernel()
    assert isinstance(loaded, scan_triton.TritonScan)
    assert scan.select_backend(FAKE_CUDA_TENSOR) is loaded
    assert caplog.records == []


def test_a_failed_self_check_logs_one_line_and_cuda_runs_the_eager_scan(cuda_with_fake_triton, monkeypatch, caplog):
    def disagree(candidate, device):
        raise RuntimeError("self-check failed: h differs from linear_scan_reference")

    monkeypatch.setattr(scan_triton, "self_check", disagree)
    with caplog.at_level(logging.WARNING, logger=scan_triton.__name__):
        assert scan.select_backend(FAKE_CUDA_TENSOR) is EagerScan
        assert scan.select_backend(FAKE_CUDA_TENSOR) is EagerScan
    (line,) = _fallback_lines(caplog)
    assert "h differs" in line and "eager chunked scan" in line


def test_environment_switch_turns_the_triton_kernel_off(cuda_with_fake_triton, monkeypatch, caplog):
    monkeypatch.setenv("SEAM_SCAN_KERNEL", "eager")
    monkeypatch.setattr(scan_triton, "self_check", lambda candidate, device: pytest.fail("must not be checked"))
    with caplog.at_level(logging.WARNING, logger=scan_triton.__name__):
        assert scan.select_backend(FAKE_CUDA_TENSOR) is EagerScan
    assert caplog.records == []


def test_without_triton_nothing_is_logged_and_cpu_keeps_the_cpp_kernel(fresh_triton_kernel, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "triton", None)  # what an environment without triton looks like
    with caplog.at_level(logging.DEBUG):
        assert scan_triton.kernel() is None
        assert scan.select_backend(FAKE_CUDA_TENSOR) is EagerScan
        cpu_backend = scan.select_backend(torch.zeros(1))
    assert caplog.records == []
    if cpu_kernel_build.compiler() is not None:
        assert cpu_backend is scan_cpu_kernel.kernel() is not None


def test_without_a_cuda_device_nothing_is_logged(fresh_triton_kernel, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.DEBUG):
        assert scan_triton.kernel() is None
    assert caplog.records == []


@pytest.fixture
def compiled_kernels():
    """The kernels module as triton.jit builds it for GPUs, even while the interpreted one of this
    module's other tests is loaded."""
    pytest.importorskip("triton")
    from triton.runtime.jit import JITFunction

    with _fresh_kernels_module(interpret=False) as kernels:
        assert isinstance(kernels.scan_forward, JITFunction)
        yield kernels


def _compile_for(kernels, kernel_name: str, dtype: str, constexprs: dict, capability: int):
    """Compile one specialisation of a kernel to a cubin for an NVIDIA GPU of `capability` (80: A100,
    90: H100/H200) with Triton's bundled LLVM and ptxas: no GPU or driver is needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    function = getattr(kernels, kernel_name)
    signature = {
        name: "constexpr" if name in constexprs else "i32" if name in ("T", "H") else f"*{dtype}"
        for name in function.arg_names
    }
    source = ASTSource(fn=function, signature=signature, constexprs=constexprs)
    options = {"num_warps": scan_triton._NUM_WARPS}
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def _resource_usage(cubin: bytes, tmp_path) -> str:
    import triton

    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    command = [triton.knobs.nvidia.cuobjdump.path, "-res-usage", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


# What the interpreter cannot show: that the kernels lower to machine code for real GPUs.
KERNEL_VARIANTS = [
    ("scan_forward", {"HAS_H0": True}),
    ("scan_forward", {"HAS_H0": False}),
    ("scan_backward", {"HAS_H0": True, "NEED_A": True}),
    ("scan_backward", {"HAS_H0": False, "NEED_A": False}),
]


def _constexprs(flags: dict) -> dict:
    return {**flags, "BLOCK_T": scan_triton.BLOCK_T, "BLOCK_H": scan_triton.BLOCK_H}


@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("kernel_name, flags", KERNEL_VARIANTS)
def test_float64_kernels_compile_for_gpus(compiled_kernels, kernel_name, flags, capability):
    compiled = _compile_for(compiled_kernels, kernel_name, "fp64", _constexprs(flags), capability)
    assert f".target sm_{capability}" in compiled.asm["ptx"] and compiled.asm["cubin"]


# float32, the dtype training runs the scan in, must not spill registers to local memory: spills
# add memory traffic to a memory-bound kernel. (float64, the checking dtype, spills 8 bytes in
# the backward with grad_a on sm_80.)
@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("kernel_name, flags", KERNEL_VARIANTS)
def test_float32_kernels_compile_for_gpus_without_spilling(compiled_kernels, kernel_name, flags, capability, tmp_path):
    compiled = _compile_for(compiled_kernels, kernel_name, "fp32", _constexprs(flags), capability)
    assert f".target sm_{capability}" in compiled.asm["ptx"]
    usage = _resource_usage(compiled.asm["cubin"], tmp_path)
    assert re.search(r"LOCAL:0\b", usage) and re.search(r"STACK:0\b", usage), usage
