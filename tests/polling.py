"""Waiting in tests for something another process does, with a deadline instead of a hang."""

from __future__ import annotations

import time


def wait_for(predicate, *, what: str, timeout_s: float = 60, every_s: float = 0.02):
    """Poll `predicate` until it returns something true, and return that; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
    return result
