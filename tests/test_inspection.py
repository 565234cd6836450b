"""SPEC sections 5 and 7 (storage side): TaskInstance views, inspection, acquire_lock."""

from __future__ import annotations

import logging

import pytest

from sample_tasks import P, settle
from triggers.exceptions import StorageConflictError
from triggers.manager import TriggerManager
from triggers.storages.base import BaseTriggerStorage
from triggers.types import (
    STATUSES,
    TaskConfig,
    TaskInstance,
)

PASS = "triggers.testing.PassThruTask"


def mixed_session(manager: TriggerManager) -> None:
    """finished t_done#0, failed t_fail#0, unstarted t_wait#0, abandoned t_stop#0,
    and t_idle with no instance."""
    manager.update_configuration(
        {
            "t_done": {"after": ["a"], "run": PASS},
            "t_fail": {"after": ["a"], "run": "triggers.testing.FailingTask"},
            "t_wait": {"after": ["a", "b"], "run": PASS},
            "t_stop": {"after": ["b"], "unless": ["a"], "run": PASS},
            "t_idle": {"after": ["c"], "run": PASS},
        }
    )
    manager.fire("a", {"v": 1})
    settle(manager)


def test_tasks_instances_and_item_access(manager: TriggerManager) -> None:
    mixed_session(manager)
    storage = manager.storage
    assert sorted(storage.tasks) == ["t_done", "t_fail", "t_idle", "t_stop", "t_wait"]
    assert all(isinstance(c, TaskConfig) for c in storage.tasks.values())
    statuses = {name: i.status for name, i in storage.instances.items()}
    assert statuses == {
        "t_done#0": "finished",
        "t_fail#0": "failed",
        "t_stop#0": "abandoned",
        "t_wait#0": "unstarted",
    }
    instance = storage["t_wait#0"]
    assert isinstance(instance, TaskInstance)
    assert instance.config == storage.tasks["t_wait"]
    assert instance.kwargs == {"a": {"v": 1}}
    assert instance.task_name == "t_wait" and instance.number == 0
    assert "t_wait#0" in storage and "t_wait#1" not in storage
    assert len(storage) == 4
    assert storage.get("t_wait#1") is None
    with pytest.raises(KeyError) as info:
        storage["t_wait#1"]
    assert "'t_wait#1'" in str(info.value) and storage.uid in str(info.value)


def test_iteration_is_in_name_order(manager: TriggerManager) -> None:
    manager.update_configuration({"t_each": {"after": [], "andEvery": "e", "run": PASS}})
    for _ in range(12):
        manager.fire("e")
    settle(manager)
    names = [i.name for i in manager.storage]
    assert names == [f"t_each#{n}" for n in range(12)]  # t_each#2 before t_each#10
    assert list(manager.storage.instances) == names


def test_instances_of_task_by_name_or_config(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_each": {"after": [], "andEvery": "e", "run": PASS},
            "t_other": {"after": ["e"], "run": PASS},
        }
    )
    manager.fire("e")
    manager.fire("e")
    settle(manager)
    by_name = manager.storage.instances_of_task("t_each")
    by_config = manager.storage.instances_of_task(manager.storage.tasks["t_each"])
    assert [i.name for i in by_name] == ["t_each#0", "t_each#1"] == [i.name for i in by_config]
    assert manager.storage.instances_of_task("t_missing") == []


def test_unresolved_tasks_and_instances(manager: TriggerManager) -> None:
    mixed_session(manager)
    storage = manager.storage
    # t_idle has no instance; t_fail and t_wait have unresolved ones.
    assert [t.name for t in storage.get_unresolved_tasks()] == ["t_fail", "t_idle", "t_wait"]
    assert [i.name for i in storage.get_unresolved_instances()] == ["t_fail#0", "t_wait#0"]
    assert [i.name for i in storage.get_instances_with_unresolved_logs()] == ["t_fail#0"]
    manager.skip_failed_instance("t_fail#0")
    settle(manager)
    assert [t.name for t in storage.get_unresolved_tasks()] == ["t_idle", "t_wait"]
    assert storage.get_instances_with_unresolved_logs() == []


def test_metadata_and_latest_kwargs(manager: TriggerManager) -> None:
    mixed_session(manager)
    manager.fire("z", {"q": [1, 2]})
    settle(manager)
    latest = manager.storage.latest_kwargs
    assert latest["a"] == {"v": 1} and latest["z"] == {"q": [1, 2]}
    assert latest["t_done"] == {"kwargs": {"a": {"v": 1}}}
    assert manager.storage.metadata["latest_kwargs"] == latest
    # Reads are copies: changing them changes nothing stored.
    latest["a"]["v"] = 99
    manager.storage["t_wait#0"].kwargs["a"]["v"] = 99
    assert manager.storage.latest_kwargs["a"] == {"v": 1}
    assert manager.storage["t_wait#0"].kwargs == {"a": {"v": 1}}


def test_debug_repr(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS, "note": 1}})
    manager.fire("a", {"v": 1})
    settle(manager)
    data = manager.storage.debug_repr()
    assert data["uid"] == manager.storage.uid
    assert data["tasks"] == {"t_x": {"after": ["a", "b"], "run": PASS, "note": 1}}
    assert list(data["instances"]) == ["t_x#0"]
    stored = data["instances"]["t_x#0"]
    assert stored["status"] == "unstarted"
    assert stored["kwargs"] == {"a": {"v": 1}}
    assert data["metadata"]["latest_kwargs"] == {"a": {"v": 1}}
    import json

    json.dumps(data)  # plain data


def test_invalidate_cache_sees_changes_from_another_handle(
    manager: TriggerManager, storage_factory: object
) -> None:
    other = storage_factory(manager.storage.uid)  # type: ignore[operator]
    manager.update_configuration({"t_x": {"after": ["a"], "run": PASS}})
    assert len(other) == 0  # caches its (empty) view
    manager.fire("a")
    settle(manager)
    other.invalidate_cache()
    assert other["t_x#0"].status == "finished"
    assert sorted(other.tasks) == ["t_x"]


# --- acquire_lock -------------------------------------------------------------------------------
def test_acquire_lock_create_clone_and_save(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "run": PASS}})
    manager.fire("a", {"v": 1})
    settle(manager)
    storage = manager.storage
    with storage.acquire_lock() as locked:
        assert locked is storage
        created = locked.create_instance("t_x", kwargs={"a": {"v": 2}}, metadata={"why": "x"})
        assert created.name == "t_x#1" and created.status == "unstarted"
        clone = locked.clone_instance("t_x#0")
        assert clone.name == "t_x#2"
        assert clone.parent == "t_x#0" and clone.depth == 1
        assert clone.kwargs == {"a": {"v": 1}}
        # Reads inside the block see the locked session.
        assert "t_x#1" in locked and locked["t_x#2"].parent == "t_x#0"
        changed = locked["t_x#0"]
        changed.metadata["note"] = "edited"
        locked["t_x#0"] = changed
        locked.save()
    storage.invalidate_cache()
    assert [i.name for i in storage] == ["t_x#0", "t_x#1", "t_x#2"]
    assert storage["t_x#0"].metadata["note"] == "edited"
    assert storage["t_x#1"].metadata["why"] == "x"
    stamps = storage["t_x#1"].metadata["timestamps"]
    assert {"created", "lastModified", "unstarted"} <= set(stamps)
    # Counters moved on: the next instance is #3. (The waiting #1 and #2 already hold
    # "a", so under the new configuration this fire finds them ready too.)
    manager.update_configuration({"t_x": {"after": [], "andEvery": "a", "run": PASS}})
    assert [i.name for i in manager.fire("a")] == ["t_x#1", "t_x#2", "t_x#3"]


def test_acquire_lock_without_save_discards(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "run": PASS}})
    before = manager.storage.debug_repr()
    with manager.storage.acquire_lock() as locked:
        locked.create_instance("t_x")
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before
    manager.fire("a")
    settle(manager)
    assert [i.name for i in manager.storage] == ["t_x#0"]


def test_acquire_lock_error_discards(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "run": PASS}})
    before = manager.storage.debug_repr()
    with pytest.raises(RuntimeError, match="oops"), manager.storage.acquire_lock() as locked:
        locked.create_instance("t_x")
        raise RuntimeError("oops")
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


def test_locked_operations_need_the_lock(storage: BaseTriggerStorage) -> None:
    TriggerManager(storage).update_configuration({"t_x": {"after": ["a"], "run": PASS}})
    with pytest.raises(RuntimeError, match="acquire_lock"):
        storage.create_instance("t_x")
    with pytest.raises(RuntimeError, match="acquire_lock"):
        storage.save()
    with storage.acquire_lock() as locked:
        with pytest.raises(KeyError, match="'t_nope'"):
            locked.create_instance("t_nope")
        with pytest.raises(KeyError, match="'t_x#5'"):
            locked.clone_instance("t_x#5")


def test_acquire_lock_then_schedule_through_recovery(manager: TriggerManager) -> None:
    """Custom code can create a scheduled instance atomically and dispatch it later."""
    manager.update_configuration({"t_x": {"after": ["a"], "run": P + "RecordingTask"}})
    with manager.storage.acquire_lock() as locked:
        locked.create_instance("t_x", kwargs={"a": {"custom": True}}, status="scheduled")
        locked.save()
    manager.recover_stuck_instances()
    settle(manager)
    result = manager.storage["t_x#0"].metadata["result"]
    assert result["triggerKwargs"] == {"a": {"custom": True}}


def test_storage_conflict_error_exists() -> None:
    from triggers.exceptions import StorageError

    assert issubclass(StorageConflictError, StorageError)


# --- TaskInstance views --------------------------------------------------------------------------
def make(status: str, **kw: object) -> TaskInstance:
    config = TaskConfig.from_dict("t_x", {"after": ["a", "b"], "unless": ["u"], "run": PASS})
    return TaskInstance("t_x#0", config, status, **kw)  # type: ignore[arg-type]


def test_meta_statuses() -> None:
    assert STATUSES == (
        "unstarted", "scheduled", "running", "finished", "failed", "skipped", "replayed",
        "abandoned",
    )
    waiting = make("unstarted", kwargs={"a": {}})
    assert waiting.can_schedule and not waiting.can_run and not waiting.can_abandon
    ready = make("unstarted", kwargs={"a": {}, "b": {}})
    assert ready.can_run
    doomed = make("unstarted", kwargs={"a": {}, "b": {}}, abandon_state={"u": {}})
    assert doomed.can_abandon and not doomed.can_run
    for status in STATUSES:
        instance = make(status, kwargs={"a": {}, "b": {}})
        assert instance.can_schedule == (status == "unstarted")
        assert instance.can_replay == instance.can_skip == (status == "failed")
        assert instance.is_resolved == (
            status in ("finished", "skipped", "replayed", "abandoned")
        )
        if status != "unstarted":
            assert not instance.can_run and not instance.can_abandon


def test_metadata_views_and_constants() -> None:
    instance = make(
        "failed",
        metadata={
            "logLevel": logging.ERROR,
            "depth": 2,
            "cooldown": 0.05,
            "parent": "t_x#1",
            "timestamps": {"created": 1.0, "lastModified": 5.0},
        },
    )
    assert instance.log_level == logging.ERROR and instance.log_level_name == "ERROR"
    assert not instance.logs_resolved
    assert instance.depth == 2 and instance.cooldown == 0.05 and instance.parent == "t_x#1"
    assert instance.last_modified == 5.0
    assert make("failed").log_level == logging.NOTSET and make("failed").logs_resolved
    assert make("failed").depth == 0 and make("failed").cooldown is None
    assert make("failed").last_modified is None
    constants = {
        "META_RESULT": "result",
        "META_EXCEPTION_TYPE": "exceptionType",
        "META_EXCEPTION_INFO": "exceptionInfo",
        "META_EXCEPTION_CONTEXT": "exceptionContext",
        "META_LOG_LEVEL": "logLevel",
        "META_LOGS_RESOLVED": "logsResolved",
        "META_PARENT": "parent",
        "META_DEPTH": "depth",
        "META_COOLDOWN": "cooldown",
        "META_ACTUAL_KWARGS": "actualKwargs",
        "META_TIMESTAMPS": "timestamps",
        "STATUS_UNSTARTED": "unstarted",
        "STATUS_SCHEDULED": "scheduled",
        "STATUS_RUNNING": "running",
        "STATUS_FINISHED": "finished",
        "STATUS_FAILED": "failed",
        "STATUS_SKIPPED": "skipped",
        "STATUS_REPLAYED": "replayed",
        "STATUS_ABANDONED": "abandoned",
    }
    for name, value in constants.items():
        assert getattr(TaskInstance, name) == value, name


def test_instance_round_trips_to_dict() -> None:
    instance = make("failed", kwargs={"a": {"x": 1}}, abandon_state={"u": {}}, metadata={"k": 1})
    copy = TaskInstance.from_dict(instance.to_dict(), instance.config)
    assert copy == instance
    assert instance.copy() == instance and instance.copy() is not instance
    assert repr(instance) == "<TaskInstance t_x#0 failed>"
