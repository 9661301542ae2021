# ruff: noqa
# Seed 000, "5. Performance Audit Tools", A. Gradient Flow Audit: verbatim; model and loss are
# the test's. The auditor reads the gradients that loss.backward() left.

from audit.performance_audit import GradientFlowAuditor

auditor = GradientFlowAuditor(model)
loss.backward()
stats = auditor.check_gradient_flow(loss)
auditor.print_report()
