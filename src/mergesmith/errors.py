"""Every error a user can fix. The CLI prints these without a traceback and exits 1."""

from __future__ import annotations


class MergesmithError(Exception):
    """A problem the user can fix: the message says what and where, the hint how to fix it.

    Ray sends a task's error to the driver by pickling it. The default Exception pickling rebuilds
    cls(*args) and restores __dict__ (message, hint), so keep the message the only positional argument
    of every subclass (tests/unit/test_errors_pickle.py checks each one).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class RecipeError(MergesmithError, ValueError):
    """The recipe YAML is malformed: syntax, unknown key, wrong type, bad parameter."""


class CheckpointError(MergesmithError, OSError):
    """A model, shard or tensor is missing or unreadable."""


class PlanError(MergesmithError):
    """The recipe and the checkpoints disagree: layer out of range, shapes differ, contract broken."""


class MergeError(MergesmithError):
    """A method cannot merge a tensor's values (found while merging: the plan never reads them)."""


class OutputError(MergesmithError, OSError):
    """The output folder cannot be written: it exists, or the disk refuses."""


class UnsupportedError(MergesmithError):
    """The recipe asks for something mergesmith does not do (yet)."""


class ClusterError(MergesmithError):
    """The Ray cluster cannot run the merge: it is unreachable, or no node has the resources asked for."""


class AccessError(MergesmithError):
    """The page (`mergesmith serve`) was given a path outside the folders it may read and write."""


class BusyError(MergesmithError):
    """The page was asked to start a second merge into an output folder another merge is writing."""
