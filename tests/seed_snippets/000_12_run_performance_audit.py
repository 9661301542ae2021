# ruff: noqa
# Seed 000, "Quick Start", 4. Run Performance Audit: verbatim; model, dataloader and device are the test's.

from audit.performance_audit import run_full_audit

run_full_audit(model, dataloader, device)
