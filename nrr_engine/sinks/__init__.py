"""Sinks write a finished plan: the org (local working copy or Salesforce), then the state store's history; a
plan can also go to a file (plan.json).

Every org sink has one method, `write(ctx, plan, journal) -> {seq: error}`, and records the plan's changes in
the run ledger through the journal in the order its org needs (write-ahead). A new place to write to (a
Salesforce Task, a webhook, a file) is a new class with that method, registered by the org kind it serves.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .local import LocalOrgSink
from .plan_file import PlanFileSink
from .salesforce import SalesforceSink
from .state import StateSink


class Journal:
    """A run's change records in the ledger, for sinks: record once (write-ahead), then settle.

    A change recorded `pending` is confirmed `applied` only once its write is known to be done; a write that
    fails part-way leaves it pending, and the next run settles it by reading the org (`reconcile.recover`)."""

    def __init__(self, ledger, run_id: str):
        self.ledger, self.run_id = ledger, run_id

    def record(self, batches: Iterable, failures: dict[int, str] | None = None, status: str = "applied") -> None:
        self.ledger.record_changes(self.run_id, batches, status, failures)

    def settle_failed(self, failed: dict[int, str]) -> None:
        self.ledger.settle_changes(self.run_id, [(s, "failed", err, None) for s, err in sorted(failed.items())])

    def confirm(self) -> None:
        """Every change still pending was written: applied."""
        self.ledger.mark_changes(self.run_id, "pending", "applied")

    def reopen(self) -> None:
        """The write the changes were recorded `applied` ahead of did not happen: pending, to be settled."""
        self.ledger.mark_changes(self.run_id, "applied", "pending")


class OrgSink(Protocol):
    def write(self, ctx, plan, journal: Journal) -> dict[int, str]:
        """Write the plan's changes; return {change seq: error} of records that failed."""


ORG_SINKS: dict[str, type] = {"local": LocalOrgSink, "salesforce": SalesforceSink}


def org_sink(org, settings) -> OrgSink:
    """The sink that writes to `org` (chosen by the org's kind)."""
    return ORG_SINKS[org.kind](org, settings)


__all__ = ["Journal", "OrgSink", "org_sink", "LocalOrgSink", "SalesforceSink", "StateSink", "PlanFileSink", "ORG_SINKS"]
