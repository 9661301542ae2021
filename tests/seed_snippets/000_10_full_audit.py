# ruff: noqa
# Seed 000, "5. Performance Audit Tools", D. Full Audit: verbatim; model, dataloader, device, x
# and y are the test's; sample_batch=(x, y) is read as the batch {"x": x, "y": y}.

from audit.performance_audit import run_full_audit

run_full_audit(model, dataloader, device, sample_batch=(x, y))
