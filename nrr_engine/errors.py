"""Errors that point at their source, and the exit codes the CLI turns them into.

Every error a user can cause carries a Location (file:line, rule, record) and says what was expected.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes (DESIGN §8). When several apply, the highest wins."""

    OK = 0
    RECORD_FAILURES = 1
    INVALID_INPUT = 2
    UNAVAILABLE = 3
    GATE_FAILED = 4


@dataclass(frozen=True)
class Location:
    """Where a problem comes from: a file and line, a rule, a record, a field."""

    file: str | None = None
    line: int | None = None
    rule: str | None = None
    record: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.rule:
            parts.append(f"rule {self.rule}")
        if self.record:
            parts.append(f"record {self.record}")
        if self.field:
            parts.append(f"field {self.field}")
        return ", ".join(parts)


class NrrError(ValueError):
    """Base error: a message plus where it comes from; `exit_code` says how the CLI ends."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, message: str, location: Location | None = None):
        self.message = message
        self.location = location or Location()
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message


class ConfigError(NrrError):
    """The config or a rule file is invalid."""


class DataError(NrrError):
    """Input data (CSV, history file) cannot be read as a whole."""


class SourceUnavailable(NrrError):
    """The org or the state store cannot be reached or locked."""

    exit_code = ExitCode.UNAVAILABLE


class GateFailed(NrrError):
    """A reconciliation gate failed; nothing was written."""

    exit_code = ExitCode.GATE_FAILED


class Interrupted(NrrError):
    """The run was asked to stop (SIGTERM/SIGINT) between stages; nothing half-written."""

    exit_code = ExitCode.UNAVAILABLE


class ConfigErrors(ConfigError):
    """Several config/rule problems collected at once (for `validate`)."""

    def __init__(self, errors: list[NrrError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
