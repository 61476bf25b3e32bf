"""Every MergesmithError survives pickle with its class, message, hint and text: Ray sends a task's
error to the driver by pickling it, and the CLI prints str(err)."""

from __future__ import annotations

import pickle

import pytest

from mergesmith import errors


def all_error_classes() -> list[type[errors.MergesmithError]]:
    """The root and every subclass, found by walking the hierarchy so a new one is covered too."""
    found, todo = [], [errors.MergesmithError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda cls: cls.__name__)


def test_the_walk_finds_every_class_in_errors_py():
    # an independent list: every exception class defined in the module
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined <= set(all_error_classes())
    assert {cls.__name__ for cls in defined} == {
        "MergesmithError", "RecipeError", "CheckpointError", "PlanError", "MergeError", "OutputError",
        "UnsupportedError", "ClusterError", "AccessError", "BusyError",
    }  # fmt: skip


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("hint", ["download the shard again", None])
def test_round_trip_keeps_class_message_hint_and_text(cls, hint):
    err = cls("model-00001-of-00002.safetensors: 10 bytes, the header says 4096", hint=hint)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.message == "model-00001-of-00002.safetensors: 10 bytes, the header says 4096"
    assert back.hint == hint
    expected = "model-00001-of-00002.safetensors: 10 bytes, the header says 4096"
    if hint is not None:
        expected += "\n  hint: download the shard again"
    assert str(back) == expected
    assert back.args == err.args


def test_builtin_bases_survive_too():
    # CheckpointError is an OSError: callers that catch OSError must still catch the unpickled copy
    back = pickle.loads(pickle.dumps(errors.CheckpointError("a.safetensors: missing", hint="check the path")))
    assert isinstance(back, OSError) and isinstance(back, errors.MergesmithError)
    assert isinstance(pickle.loads(pickle.dumps(errors.RecipeError("x: bad"))), ValueError)
