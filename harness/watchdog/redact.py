"""Secrets never reach a bundle (pure): the rules of :mod:`harness.redact`, for the watchdog.

A :class:`Redactor` is built from every environment the capture sees (ours, the launch spec's,
each process's) and scrubs every text written into an incident: the values of secret variables
wherever they appear (a log line, a command line, a stack), and the arguments of flags such as
``--api-key``. The rules live in :mod:`harness.redact`, which :mod:`harness.rundir` uses too,
so that no file under ``runs/`` holds a secret.
"""

from __future__ import annotations

from harness.redact import (
    MASK,
    MIN_SECRET_LEN,
    SECRET_FLAGS,
    Redactor,
    is_secret_name,
    redact_launch_spec,
    secret_arguments,
)

__all__ = [
    "MASK",
    "MIN_SECRET_LEN",
    "SECRET_FLAGS",
    "Redactor",
    "is_secret_name",
    "redact_launch_spec",
    "secret_arguments",
]
