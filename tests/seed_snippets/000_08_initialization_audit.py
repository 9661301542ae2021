# ruff: noqa
# Seed 000, "5. Performance Audit Tools", B. Initialization Audit: verbatim; model is the test's.

from audit.performance_audit import InitializationAuditor

auditor = InitializationAuditor(model)
auditor.check_initialization()
auditor.print_report()
