"""compile=true with the fused CPU kernels: dynamo sees each kernel, and each kernel lookup, as one
opaque call, so it neither traces into their ctypes plumbing nor warns, and the compiled model
computes what the eager one does. Dynamo's "eager" backend keeps these tests at dynamo's own cost
(the inductor path is the slow test in tests/test_trainer_switches.py)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from models import build_model, delta_cpu_kernel, seam_cpu_kernel
from models.scan import linear_scan, linear_scan_reference

# The kernel entry points each model must reach under compile, as the graph breaks name them.
KERNEL_CALLS = {
    "z2_delta": {"kernel_for", "invariant_features", "gated_states", "rms_norm", "modulated"},
    "z2_seam": {"kernel_for", "seam_recurrence"},
}
KERNEL_MODULES = {"z2_delta": delta_cpu_kernel, "z2_seam": seam_cpu_kernel}


def _forward_and_gradients(forward, model, x):
    model.zero_grad(set_to_none=True)
    output = forward(x)
    output.square().mean().backward()
    return [output.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)]


def _skipped_functions() -> set[str]:
    """The functions dynamo ran eagerly because they are torch.compiler.disable'd."""
    reasons = torch._dynamo.utils.counters["graph_break"]
    return {m.group(1) for reason in reasons for m in re.finditer(r"Skip calling function `<function (\w+)", reason)}


@pytest.mark.parametrize("name", ["z2_delta", "z2_seam"])
def test_a_compiled_model_runs_its_kernels_as_opaque_calls_and_equals_the_eager_model(name):
    if KERNEL_MODULES[name].kernel() is None:
        pytest.skip("the fused CPU kernel did not build on this machine")
    torch.manual_seed(0)
    model = build_model(name, input_dim=4, output_dim=4, hidden_dim=16)
    x = torch.randn(3, 20, 4)
    expected = _forward_and_gradients(model.forward, model, x)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model.forward, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [_forward_and_gradients(compiled, model, x) for _ in range(2)]
    try:
        breaks = dict(torch._dynamo.utils.counters["graph_break"])
        skipped = _skipped_functions()
    finally:
        torch._dynamo.reset()
    assert [str(w.message) for w in caught] == []
    # Every graph break is a disabled kernel call: none is dynamo failing inside the kernels' plumbing.
    assert breaks and all("torch.compiler.disable" in reason for reason in breaks)
    assert KERNEL_CALLS[name] <= skipped
    for run in runs:
        assert len(run) == len(expected)
        for value, reference in zip(run, expected):
            torch.testing.assert_close(value, reference, rtol=0, atol=0)


def test_a_compiled_scan_is_one_opaque_call_with_the_scans_gradients():
    generator = torch.Generator().manual_seed(1)
    a = (torch.rand(2, 50, 3, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    b = torch.randn(2, 50, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        h = torch.compile(lambda a, b: linear_scan(a.tanh(), b) * 2, backend="eager")(a, b)
        skipped = _skipped_functions()
    finally:
        torch._dynamo.reset()
    assert skipped == {"linear_scan"}
    reference = linear_scan_reference(a.tanh(), b) * 2
    torch.testing.assert_close(h, reference)
    grads = torch.autograd.grad(h.sum(), (a, b))
    torch.testing.assert_close(grads, torch.autograd.grad(reference.sum(), (a, b)))
