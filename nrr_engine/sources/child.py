"""What a process the engine forks (a side load, a kept load's writer, a strict re-read) does first about signals.

A fork inherits the run's handlers for SIGTERM and SIGINT, which print "stopping after the current stage" and let
the run finish its stage. In a child that is wrong twice over: the engine ends a child it no longer needs with
SIGTERM (which the inherited handler would only print about, so the engine waited for the whole load), and Ctrl-C
reaches every process of the terminal's group, where only the engine decides what stops.
"""
from __future__ import annotations

import signal


def as_child() -> None:
    """SIGTERM ends the child at once; SIGINT is the engine's to handle (it ends its children itself)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
