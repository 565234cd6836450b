"""SPEC section 11: TriggerManagerTestCaseMixin, the sample tasks, name_matches_classpath,
and the pytest plugin's fixtures."""

from __future__ import annotations

import unittest
import uuid
from typing import Any

import pytest

from sample_tasks import settle
from triggers.manager import TriggerManager
from triggers.pytest_plugin import TriggerAssertions
from triggers.storages.memory import MemoryStorageBackend
from triggers.task import MaxRetriesExceeded, TriggerTask
from triggers.testing import (
    DevNullTask,
    FailingTask,
    PassThruTask,
    SelfRetryingTask,
    SelfSkippingTask,
    TriggerManagerTestCaseMixin,
    name_matches_classpath,
)

T = "triggers.testing."


def sample_session(manager: TriggerManager) -> None:
    """One instance in each interesting state."""
    manager.update_configuration(
        {
            "t_pass": {"after": ["go"], "run": T + "PassThruTask"},
            "t_null": {"after": ["go"], "run": T + "DevNullTask"},
            "t_fail": {"after": ["go"], "run": T + "FailingTask"},
            "t_skip": {"after": ["go"], "run": T + "SelfSkippingTask"},
            "t_retry": {
                "after": ["go"],
                "run": T + "SelfRetryingTask",
                "withParams": {"retries": {"max": 2}},
            },
            "t_wait": {"after": ["go", "later"], "run": T + "PassThruTask"},
            "t_stop": {"after": ["later"], "unless": ["go"], "run": T + "PassThruTask"},
            "t_idle": {"after": ["never"], "run": T + "PassThruTask"},
        }
    )
    manager.fire("go", {"n": 1})
    settle(manager)


# --- the sample tasks, on every backend ------------------------------------------------------
def test_sample_tasks_behaviour(manager: TriggerManager) -> None:
    sample_session(manager)
    asserts = TriggerAssertions(manager)
    asserts.assertInstanceFinished("t_pass#0", {"kwargs": {"go": {"n": 1}}})
    asserts.assertInstanceFinished("t_null#0", {})
    assert manager.storage["t_null#0"].metadata["result"] == {}
    failed = asserts.assertInstanceFailed("t_fail#0", RuntimeError)
    assert "failed on purpose" in failed.metadata["exceptionInfo"]
    skipped = asserts.assertInstanceSkipped("t_skip#0")
    assert skipped.metadata["kwargs"] == {"go": {"n": 1}}
    asserts.assertInstanceReplayed("t_retry#0")
    asserts.assertInstanceReplayed("t_retry#1")
    asserts.assertInstanceFinished("t_retry#2", {"count": 2})
    asserts.assertInstanceMissing("t_retry#3")
    asserts.assertInstanceUnstarted("t_wait#0")
    asserts.assertInstanceAbandoned("t_stop#0")
    asserts.assertInstanceMissing("t_idle#0")
    asserts.assertUnresolvedTasks(["t_fail", "t_idle", "t_wait"])
    asserts.assertUnresolvedInstances(["t_fail#0", "t_wait#0"])


def test_self_retrying_task_defaults_to_its_max_retries(manager: TriggerManager) -> None:
    manager.update_configuration({"t_r": {"after": ["go"], "run": T + "SelfRetryingTask"}})
    manager.fire("go")
    settle(manager)
    statuses = [i.status for i in manager.storage]
    assert SelfRetryingTask.max_retries == 3
    assert statuses == ["replayed", "replayed", "replayed", "finished"]
    assert manager.storage["t_r#3"].metadata["result"] == {"count": 3}


def test_self_retrying_task_beyond_max_retries_fails(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_r": {
                "after": ["go"],
                "run": T + "SelfRetryingTask",
                "withParams": {"retries": {"max": 5}},
            }
        }
    )
    manager.fire("go")
    TriggerAssertions(manager).assertInstanceFailed("t_r#3", MaxRetriesExceeded)


def test_self_retrying_task_with_zero_max_finishes_at_once(manager: TriggerManager) -> None:
    manager.update_configuration({"t_r": {"after": ["go"], "run": T + "SelfRetryingTask"}})
    manager.fire("go", {"n": 1})
    manager.update_configuration(
        {
            "t_z": {
                "after": ["go2"],
                "run": T + "SelfRetryingTask",
                "withParams": {"retries": {"max": 0}},
            }
        }
    )
    manager.fire("go2")
    TriggerAssertions(manager).assertInstanceFinished("t_z#0", {"count": 0})


def test_name_matches_classpath() -> None:
    for cls in (PassThruTask, DevNullTask, FailingTask, SelfSkippingTask, SelfRetryingTask):
        assert cls.name == f"triggers.testing.{cls.__name__}"
        assert issubclass(cls, TriggerTask)

    @name_matches_classpath
    class Local(TriggerTask):
        pass

    assert Local.name == f"{__name__}.test_name_matches_classpath.<locals>.Local"


# --- assertion failure messages, on every backend ----------------------------------------------
def failure(call: Any, *args: Any) -> str:
    with pytest.raises(AssertionError) as info:
        call(*args)
    return str(info.value)


def test_assertions_fail_with_informative_messages(manager: TriggerManager) -> None:
    sample_session(manager)
    a = TriggerAssertions(manager)
    message = failure(a.assertInstanceFinished, "t_fail#0")
    assert "expected t_fail#0 to be 'finished'" in message
    assert "'failed'" in message
    assert "exceptionType" in message  # the metadata...
    assert "Traceback (most recent call last)" in message  # ...and the traceback
    assert "failed on purpose" in message

    message = failure(a.assertInstanceFailed, "t_fail#0", ValueError)
    assert "builtins.ValueError" in message and "builtins.RuntimeError" in message
    assert "Traceback" in message

    message = failure(a.assertInstanceFailed, "t_pass#0", RuntimeError)
    assert "'failed'" in message and "'finished'" in message and "result" in message

    message = failure(a.assertInstanceFinished, "t_pass#0", {"kwargs": {}})
    assert "'go'" in message  # the dict diff shows the actual result...
    assert "unexpected result of t_pass#0" in message and "actualKwargs" in message  # ...metadata

    message = failure(a.assertInstanceMissing, "t_pass#0")
    assert "t_pass#0" in message and "finished" in message and "metadata" in message

    for call, name in [
        (a.assertInstanceAbandoned, "t_pass#0"),
        (a.assertInstanceReplayed, "t_retry#2"),
        (a.assertInstanceSkipped, "t_fail#0"),
        (a.assertInstanceUnstarted, "t_stop#0"),
    ]:
        message = failure(call, name)
        assert f"expected {name} to be" in message and "metadata" in message

    message = failure(a.assertInstanceFinished, "t_pass#7")
    assert "'t_pass#7' does not exist" in message and "t_pass#0" in message

    message = failure(a.assertUnresolvedTasks, ["t_fail"])
    assert "t_idle" in message and "t_wait" in message
    assert "t_fail#0 is 'failed'" in message and "Traceback" in message

    message = failure(a.assertUnresolvedInstances, ["t_wait#0"])
    assert "t_fail#0" in message and "Traceback" in message


# --- the unittest mixin -------------------------------------------------------------------------
class MixinTest(TriggerManagerTestCaseMixin, unittest.TestCase):
    """Used the way an application's test suite uses it."""

    def setUp(self) -> None:
        super().setUp()
        self.storage = MemoryStorageBackend(f"mixin-{uuid.uuid4().hex}")
        self.manager = TriggerManager(self.storage)

    def tearDown(self) -> None:
        super().tearDown()
        self.storage.delete_session()

    def test_tasks_run_on_threads_and_by_python_path(self) -> None:
        self.manager.update_configuration({"t_a": {"after": ["go"], "run": T + "PassThruTask"}})
        config = self.storage.tasks["t_a"]
        self.assertEqual(self.manager.get_runner_key(config), "threading")
        self.manager.fire("go", {"x": 1})
        self.assertInstanceFinished("t_a#0", {"kwargs": {"go": {"x": 1}}})
        self.assertUnresolvedTasks([])
        self.assertUnresolvedInstances([])

    def test_failures_raise_assertion_error(self) -> None:
        self.manager.update_configuration({"t_f": {"after": ["go"], "run": T + "FailingTask"}})
        self.manager.fire("go")
        self.assertInstanceFailed("t_f#0", RuntimeError)
        with self.assertRaises(self.failureException) as info:
            self.assertInstanceFinished("t_f#0")
        self.assertIn("Traceback", str(info.exception))


def test_mixin_restores_the_celery_runner_after_the_test() -> None:
    result = unittest.TestResult()
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(MixinTest)
    suite.run(result)
    assert result.wasSuccessful(), result.failures + result.errors
    assert result.testsRun == 2
    manager = TriggerManager(MemoryStorageBackend(f"after-{uuid.uuid4().hex}"))
    manager.update_configuration({"t_a": {"after": ["go"], "run": T + "PassThruTask"}})
    assert manager.get_runner_key(manager.storage.tasks["t_a"]) == "celery"


# --- the pytest plugin --------------------------------------------------------------------
def test_plugin_fixtures(
    trigger_manager: TriggerManager,
    trigger_storage: Any,
    trigger_asserts: TriggerAssertions,
    triggers_threading: None,
) -> None:
    assert isinstance(trigger_storage, MemoryStorageBackend)
    assert trigger_manager.storage is trigger_storage
    assert trigger_asserts.manager is trigger_manager
    trigger_manager.update_configuration(
        {
            "t_a": {"after": ["go"], "run": T + "PassThruTask"},
            "t_b": {"after": ["t_a"], "run": T + "FailingTask"},
        }
    )
    assert trigger_manager.get_runner_key(trigger_storage.tasks["t_a"]) == "threading"
    trigger_manager.fire("go", {"v": 1})
    trigger_asserts.assertInstanceFinished("t_a#0", {"kwargs": {"go": {"v": 1}}})
    trigger_asserts.assertInstanceFailed("t_b#0", RuntimeError)
    trigger_asserts.assertUnresolvedInstances(["t_b#0"])
    with pytest.raises(AssertionError, match="Traceback"):
        trigger_asserts.assertInstanceFinished("t_b#0")


def test_plugin_storage_is_fresh_per_test(trigger_storage: Any) -> None:
    assert len(trigger_storage) == 0 and trigger_storage.tasks == {}


def test_mixin_starts_each_test_with_empty_memory_sessions() -> None:
    import unittest

    from triggers.storages.memory import MemoryStorageBackend
    from triggers.testing import TriggerManagerTestCaseMixin

    early = MemoryStorageBackend("mixin-reused-uid")
    TriggerManager(early).fire("leftover", {"from": "an earlier test"})

    class Case(TriggerManagerTestCaseMixin, unittest.TestCase):
        def test_fresh(self) -> None:
            self.manager = TriggerManager(MemoryStorageBackend("mixin-reused-uid"))
            self.assertEqual(self.manager.storage.latest_kwargs, {})

    result = unittest.TestResult()
    Case("test_fresh").run(result)
    assert result.wasSuccessful(), result.failures + result.errors
    # Storage objects built before the reset see the same, emptied session.
    early.invalidate_cache()
    assert early.latest_kwargs == {}
