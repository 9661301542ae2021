"""Shared fixtures and checks: tests marked gpu skipped without CUDA, the real Hydra config (composed
the way train_hydra.py composes it), the overrides of a quick one-epoch CPU fit, the two paths of
z2_seam's time loop and of z2_delta's units, a tanh counter, and the two-chunk check of a model that
carries its state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

from models import cpu_kernel_build, delta_cpu_kernel, scan_cpu_kernel, seam_cpu_kernel
from train_hydra import compose_config, config_without_hydra, train

# A quick fit: one epoch of z2_delta on a short trajectory, on the CPU, without validation or output.
QUICK_FIT = [
    "model=z2_delta",
    "data.generator.T=600",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run where a CUDA device is present and are skipped, saying so, elsewhere."""
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="marked gpu: needs a CUDA device, and this machine has none")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(no_cuda)


def train_like_the_cli(overrides: list[str], output_dir: Path) -> dict:
    """Train as `python train_hydra.py <overrides>` would, .hydra/config.yaml included, into output_dir."""
    cfg = compose_config(overrides, output_dir)
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config_without_hydra(cfg), output_dir / ".hydra" / "config.yaml")
    return train(cfg)


@pytest.fixture
def make_config(tmp_path):
    """compose_config with the run writing into this test's tmp dir."""
    return lambda overrides=(): compose_config(list(overrides), tmp_path)


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """No loaded CPU kernel and an empty build cache (so a patched compiler is really called); the
    real kernels are loaded again afterwards."""
    monkeypatch.setenv("SEAM_SCAN_CACHE", str(tmp_path / "cache"))
    kernels = (scan_cpu_kernel.kernel, seam_cpu_kernel.kernel, delta_cpu_kernel.kernel)
    for kernel in kernels:
        kernel.cache_clear()
    yield
    for kernel in kernels:
        kernel.cache_clear()


def _take_path(path: str, monkeypatch, kernel_module, what: str) -> str:
    """Make `path` ("fused" or another) the one the model takes: the loaded kernel of `kernel_module`,
    or none (its torch path); skips where no compiler can build the kernel."""
    if path == "fused":
        if cpu_kernel_build.compiler() is None:
            pytest.skip(f"no C++ compiler on this machine: the fused {what} cannot be built")
        assert kernel_module.kernel() is not None, f"a compiler exists but the {what} did not load (see the log)"
    else:
        monkeypatch.setattr(kernel_module, "kernel", lambda: None)
    return path


@pytest.fixture(params=["fused", "eager"])
def seam_path(request, monkeypatch):
    """Run the test once through each path of z2_seam's time loop on CPU: the fused kernel and the eager loop."""
    return _take_path(request.param, monkeypatch, seam_cpu_kernel, "seam kernel")


@pytest.fixture(params=["fused", "torch"])
def delta_path(request, monkeypatch):
    """Run the test once through each path of z2_delta's units on CPU: the fused kernels and the torch ops."""
    return _take_path(request.param, monkeypatch, delta_cpu_kernel, "z2_delta kernels")


class CountTanh(TorchFunctionMode):
    """Counts the torch.tanh calls made while it is active (a gate recorder sees those ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.tanh
        return func(*args, **(kwargs or {}))


def detach_state(state):
    """A carried state (a tensor, or a tuple of them) cut from its graph, as truncated BPTT cuts it."""
    return state.detach() if isinstance(state, torch.Tensor) else tuple(part.detach() for part in state)


def check_chunks_equal_whole(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, atol: float) -> None:
    """Two chunks chained by `forward_with_state` give the whole chunk's outputs, loss and (through the
    undetached state) gradients. With the state detached (truncated BPTT) the first chunk's gradient
    is still exact and the second's leaves out exactly the paths through the boundary, which are not
    zero; a chunk started from zeros differs (negative control)."""
    params = list(model.parameters())
    half = x.shape[1] // 2
    mse = torch.nn.functional.mse_loss
    whole = model(x)
    first, state = model.forward_with_state(x[:, :half])
    second, _ = model.forward_with_state(x[:, half:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=atol)
    loss_chunks = (mse(first, y[:, :half]) + mse(second, y[:, half:])) / 2
    torch.testing.assert_close(loss_chunks, mse(whole, y), rtol=0, atol=atol)
    grads_whole = torch.autograd.grad(mse(whole, y), params, retain_graph=True)
    for grad, reference in zip(torch.autograd.grad(loss_chunks, params, retain_graph=True), grads_whole):
        torch.testing.assert_close(grad, reference, rtol=1e-9, atol=atol)
    grads_first = torch.autograd.grad(mse(first, y[:, :half]), params, retain_graph=True)
    for grad, reference in zip(grads_first, torch.autograd.grad(mse(whole[:, :half], y[:, :half]), params)):
        torch.testing.assert_close(grad, reference, rtol=1e-9, atol=atol)
    assert (model.forward_with_state(x[:, half:])[0] - second).abs().max() > 1e-3
    detached, _ = model.forward_with_state(x[:, half:], detach_state(state))
    torch.testing.assert_close(detached, second, rtol=0, atol=atol)
    truncated = torch.autograd.grad(mse(detached, y[:, half:]), params)
    through = torch.autograd.grad(mse(second, y[:, half:]), params)
    assert max((a - b).abs().max() for a, b in zip(through, truncated)) > 1e-6
