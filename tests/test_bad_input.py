"""Bad input: a clear error naming what was wrong, and nothing stored.

Every test compares ``storage.debug_repr()`` before and after the bad call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import celery
import pytest

from sample_tasks import P, settle
from triggers.exceptions import (
    ConfigurationError,
    DispatchError,
    InvalidTriggerKwargs,
    RunnerNotFoundError,
    TaskNotFoundError,
    TriggersError,
)
from triggers.manager import TriggerManager
from triggers.runners import task_runners
from triggers.runners.threading import ThreadingTaskRunner

PASS = "triggers.testing.PassThruTask"


def unchanged(manager: TriggerManager, call: Callable[[], Any], error: type[BaseException],
              *fragments: str) -> BaseException:
    """Run ``call``; it must raise ``error`` mentioning ``fragments`` and store nothing."""
    settle(manager)
    before = manager.storage.debug_repr()
    with pytest.raises(error) as info:
        call()
    settle(manager)
    assert manager.storage.debug_repr() == before
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def base_session(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_a": {"after": ["a"], "run": PASS},
            "t_f": {"after": ["f"], "run": "triggers.testing.FailingTask"},
        }
    )
    manager.fire("f", {"v": 1})
    settle(manager)


class Unserializable:
    pass


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"x": Unserializable()}, "JSON-serializable"),
        ({"x": {1, 2}}, "JSON-serializable"),
        ({"x": math.nan}, "JSON-serializable"),
        ({("a", "b"): 1}, "JSON-serializable"),
        ([1, 2], "must be a mapping"),
        ("a=1", "must be a mapping"),
        (42, "must be a mapping"),
    ],
)
def test_trigger_kwargs_must_be_a_json_mapping(
    manager: TriggerManager, kwargs: Any, fragment: str
) -> None:
    base_session(manager)
    error = unchanged(manager, lambda: manager.fire("a", kwargs), InvalidTriggerKwargs,
                      fragment, "'a'")
    assert isinstance(error, TriggersError) and isinstance(error, ValueError)


@pytest.mark.parametrize("name", ["", None, 3, ["a"]])
def test_trigger_name_must_be_a_string(manager: TriggerManager, name: Any) -> None:
    base_session(manager)
    unchanged(manager, lambda: manager.fire(name), ValueError, "trigger name", repr(name))


def test_invalid_configuration(manager: TriggerManager) -> None:
    base_session(manager)
    unchanged(
        manager,
        lambda: manager.update_configuration({"t_a": {"after": "a", "run": PASS}}),
        ConfigurationError,
        "'t_a'",
        "'after'",
    )


def test_unknown_instance_name(manager: TriggerManager) -> None:
    base_session(manager)
    unchanged(manager, lambda: manager.replay_failed_instance("t_f#3"), KeyError, "'t_f#3'")
    unchanged(manager, lambda: manager.update_instance_metadata("t_zz#0", {}), KeyError, "t_zz#0")


def test_replay_or_skip_of_an_instance_that_is_not_failed(manager: TriggerManager) -> None:
    base_session(manager)
    manager.fire("a")
    settle(manager)
    for call in (manager.replay_failed_instance, manager.skip_failed_instance):
        unchanged(manager, lambda c=call: c("t_a#0"), ValueError, "'t_a#0'", "'finished'")


@pytest.mark.parametrize(
    "call_name, fragment",
    [
        ("replay", "JSON-serializable"),
        ("skip", "JSON-serializable"),
        ("status", "JSON-serializable"),
        ("metadata", "must be a mapping"),
        ("cascade", "JSON-serializable"),
    ],
)
def test_recovery_arguments_must_be_json_mappings(
    manager: TriggerManager, call_name: str, fragment: str
) -> None:
    base_session(manager)
    bad = {"x": Unserializable()}
    calls: dict[str, Callable[[], Any]] = {
        "replay": lambda: manager.replay_failed_instance("t_f#0", bad),
        "skip": lambda: manager.skip_failed_instance("t_f#0", cascade=True, result=bad),
        "status": lambda: manager.update_instance_status("t_f#0", "finished", bad),
        "metadata": lambda: manager.update_instance_metadata("t_f#0", ["x"]),  # type: ignore
        "cascade": lambda: manager.update_instance_status(
            "t_f#0", "finished", cascade=True, cascade_kwargs=bad
        ),
    }
    unchanged(manager, calls[call_name], InvalidTriggerKwargs, fragment, "'t_f#0'")


@pytest.mark.parametrize(
    "run",
    [
        "no_such_module.NoTask",
        "sample_tasks.NoSuchTask",
        "sample_tasks.settle",  # exists, but is not a TriggerTask
        "os.path",
        "NoDots",
    ],
)
def test_run_naming_no_registered_task(manager: TriggerManager, run: str) -> None:
    manager.update_configuration({"t_x": {"after": ["go"], "run": run}})
    error = unchanged(manager, lambda: manager.fire("go", {"v": 1}), TaskNotFoundError,
                      "'t_x'", repr(run))
    assert isinstance(error, DispatchError) and isinstance(error, LookupError)
    assert isinstance(error, TriggersError)
    assert manager.storage.latest_kwargs == {}
    assert len(manager.storage) == 0


class PlainCeleryTask(celery.Task):
    name = "myapp.tasks.Plain"

    def run(self) -> None:  # pragma: no cover - never runs
        pass


PLAIN_APP = celery.Celery("triggers-test-bad-input", set_as_current=False)
PLAIN_APP.register_task(PlainCeleryTask())


def test_run_naming_a_celery_task_that_is_not_a_trigger_task(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["go"], "run": "myapp.tasks.Plain"}})
    unchanged(manager, lambda: manager.fire("go"), TaskNotFoundError, "does not extend TriggerTask")


def test_cascade_to_an_unknown_task_fails_the_finishing_instance(manager: TriggerManager) -> None:
    """The cascade cannot be dispatched: the instance fails (replayable) instead of
    finishing silently without its cascade."""
    manager.update_configuration(
        {
            "t_a": {"after": ["go"], "run": PASS},
            "t_b": {"after": ["t_a"], "run": "no_such_module.Task"},
        }
    )
    manager.fire("go")
    settle(manager)
    instance = manager.storage["t_a#0"]
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "triggers.exceptions.TaskNotFoundError"
    assert "no_such_module.Task" in instance.metadata["exceptionInfo"]
    assert "t_b#0" not in manager.storage
    # Fix the configuration and replay: the cascade happens.
    manager.update_configuration({"t_b": {"after": ["t_a"], "run": PASS}})
    manager.replay_failed_instance("t_a#0")
    settle(manager)
    assert manager.storage["t_a#1"].status == "finished"
    assert manager.storage["t_b#0"].status == "finished"


# --- runner keys ---------------------------------------------------------------------------------
class TemporaryRunner(ThreadingTaskRunner):
    pass


@pytest.fixture
def temporary_runner() -> Iterator[str]:
    task_runners.register("temporary", TemporaryRunner)
    yield "temporary"
    task_runners.unregister("temporary")


def test_unknown_runner_key_at_configuration_time(manager: TriggerManager) -> None:
    base_session(manager)
    unchanged(
        manager,
        lambda: manager.update_configuration({"t_x": {"after": ["a"], "run": PASS,
                                                      "using": "nope"}}),
        ConfigurationError,
        "'t_x'",
        "'using'",
        "'nope'",
    )


def test_runner_unregistered_later_fails_at_fire_time(
    manager: TriggerManager, temporary_runner: str
) -> None:
    manager.update_configuration(
        {"t_x": {"after": [], "andEvery": "go", "run": PASS, "using": temporary_runner}}
    )
    manager.fire("go", {"n": 1})
    settle(manager)
    assert manager.storage["t_x#0"].status == "finished"
    task_runners.unregister(temporary_runner)
    for fresh in (False, True):
        who = TriggerManager(manager.storage) if fresh else manager
        error = unchanged(who, lambda w=who: w.fire("go", {"n": 2}), RunnerNotFoundError,
                          "'temporary'", "t_x#1")
        assert isinstance(error, DispatchError)
    assert manager.storage.latest_kwargs["go"] == {"n": 1}


def test_invalid_session_uid() -> None:
    from triggers.storages.memory import MemoryStorageBackend

    for uid in ("", None, 3):
        with pytest.raises(ValueError, match="session uid"):
            MemoryStorageBackend(uid)  # type: ignore[arg-type]


def test_unknown_task_in_locked_create(manager: TriggerManager) -> None:
    base_session(manager)

    def create() -> None:
        with manager.storage.acquire_lock() as locked:
            locked.create_instance("t_nope")
            locked.save()

    unchanged(manager, create, KeyError, "'t_nope'")


def test_session_is_usable_after_bad_input(manager: TriggerManager) -> None:
    base_session(manager)
    with pytest.raises(InvalidTriggerKwargs):
        manager.fire("a", {"x": Unserializable()})
    with pytest.raises(ConfigurationError):
        manager.update_configuration({"t_a": {"run": PASS}})
    manager.fire("a", {"ok": True})
    settle(manager)
    assert manager.storage["t_a#0"].metadata["result"] == {"kwargs": {"a": {"ok": True}}}
    assert P  # sample tasks importable


class BrokenRunner(ThreadingTaskRunner):
    """Passes the pre-commit check but cannot start anything."""

    def run(self, manager: TriggerManager, task_instance: Any) -> None:
        raise ConnectionError(f"broker down, cannot send {task_instance.name}")


@pytest.fixture
def broken_runner() -> Iterator[str]:
    task_runners.register("broken", BrokenRunner)
    yield "broken"
    task_runners.unregister("broken")


def test_dispatch_failure_after_commit_marks_instances_failed(
    manager: TriggerManager, broken_runner: str
) -> None:
    manager.update_configuration(
        {
            "t_x": {"after": ["go"], "run": PASS, "using": broken_runner},
            "t_ok": {"after": ["go"], "run": PASS},
        }
    )
    with pytest.raises(DispatchError) as info:
        manager.fire("go", {"n": 1})
    message = str(info.value)
    assert "t_x#0" in message and "broker down" in message and manager.storage.uid in message
    settle(manager)
    # The step committed: the trigger is recorded and the other task ran.
    assert manager.storage.latest_kwargs["go"] == {"n": 1}
    assert manager.storage["t_ok#0"].status == "finished"
    failed = manager.storage["t_x#0"]
    assert failed.status == "failed"
    assert failed.metadata["exceptionType"] == "builtins.ConnectionError"
    # Once the runner works again, the failed instance can be replayed.
    manager.update_configuration({"t_x": {"after": ["go"], "run": PASS}})
    manager.replay_failed_instance("t_x#0")
    settle(manager)
    assert manager.storage["t_x#1"].metadata["result"] == {"kwargs": {"go": {"n": 1}}}
