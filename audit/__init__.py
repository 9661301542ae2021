"""Training-health audits (gradients, initialisation, data loading, memory) and their callbacks."""

from audit.callbacks import AuditCallback, NonFiniteGuard
from audit.performance_audit import (
    AuditReport,
    DataLoaderAuditor,
    GradientFlowAuditor,
    InitializationAuditor,
    MemoryProfiler,
    run_full_audit,
)

__all__ = [
    "AuditCallback",
    "AuditReport",
    "DataLoaderAuditor",
    "GradientFlowAuditor",
    "InitializationAuditor",
    "MemoryProfiler",
    "NonFiniteGuard",
    "run_full_audit",
]
