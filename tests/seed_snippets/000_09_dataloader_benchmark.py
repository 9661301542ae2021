# ruff: noqa
# Seed 000, "5. Performance Audit Tools", C. DataLoader Benchmark: verbatim; dataloader is the test's.

from audit.performance_audit import DataLoaderAuditor

auditor = DataLoaderAuditor()
stats = auditor.benchmark_dataloader(dataloader, n_batches=100)
