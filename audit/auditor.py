"""What every audit shares: the report-printing base class, short name lists, the megabyte."""

from __future__ import annotations

from typing import Any

MEGABYTE = 2.0**20


def short_list(names: list[str], limit: int = 3) -> str:
    """The first `limit` names and how many more: recommendations stay one readable line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Auditor:
    """Shared `print_report` of the auditors: the report exists once the audit has run."""

    report: Any = None
    audit_method = "the audit"

    def print_report(self) -> None:
        if self.report is None:
            raise RuntimeError(f"{type(self).__name__} has no report yet; call {self.audit_method}() first.")
        print(self.report)
