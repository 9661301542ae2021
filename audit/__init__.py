"""Training-health audits (gradients, initialisation, data loading, memory) and their callbacks."""

from audit.callbacks import AuditCallback, NonFiniteGuard
from audit.dataloader import DataLoaderAuditor
from audit.gradient_flow import GradientFlowAuditor
from audit.initialization import InitializationAuditor
from audit.memory import MemoryProfiler
from audit.performance_audit import AuditReport, run_full_audit

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
