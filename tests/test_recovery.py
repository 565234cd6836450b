"""SPEC section 7 (manager side): replay, skip, status and metadata updates, hooks,
wrong-state and unknown-instance errors, recovery of stuck instances."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sample_tasks import HookRecordingManager, P, settle
from triggers.manager import TriggerManager
from triggers.types import TaskInstance

PASS = "triggers.testing.PassThruTask"


def failed_session(manager: TriggerManager) -> TaskInstance:
    """``t_x`` (FlakyTask after ``go``) failed; ``t_next`` waits for its cascade."""
    manager.update_configuration(
        {
            "t_x": {"after": ["go"], "run": P + "FlakyTask"},
            "t_next": {"after": ["t_x"], "run": PASS},
        }
    )
    manager.fire("go", {"ok": False, "n": 1})
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "failed"
    return instance


# --- replay ------------------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["name", "object"])
def test_replay_runs_a_clone_at_once(manager: TriggerManager, by: str) -> None:
    failed = failed_session(manager)
    clone = manager.replay_failed_instance(failed if by == "object" else "t_x#0")
    assert clone.name == "t_x#1"
    assert clone.status == "scheduled"
    assert clone.parent == "t_x#0" and clone.depth == 1
    settle(manager)
    replayed = manager.storage["t_x#0"]
    assert replayed.status == "replayed"
    assert "replayed" in replayed.metadata["timestamps"]
    # Same kwargs: the clone fails the same way.
    again = manager.storage["t_x#1"]
    assert again.status == "failed"
    assert again.kwargs == {"go": {"ok": False, "n": 1}}
    assert again.metadata["parent"] == "t_x#0" and again.metadata["depth"] == 1


def test_replay_with_replacement_kwargs_replaces_them_completely(
    manager: TriggerManager,
) -> None:
    failed_session(manager)
    manager.replay_failed_instance("t_x#0", replacement_kwargs={"fixed": {"ok": True}})
    settle(manager)
    clone = manager.storage["t_x#1"]
    assert clone.status == "finished"
    assert clone.kwargs == {"fixed": {"ok": True}}  # "go" is gone: not merged
    assert clone.metadata["result"] == {"kwargs": {"fixed": {"ok": True}}}
    assert manager.storage["t_next#0"].metadata["result"] == {
        "kwargs": {"t_x": {"kwargs": {"fixed": {"ok": True}}}}
    }


def test_replay_of_a_clone_deepens(manager: TriggerManager) -> None:
    failed_session(manager)
    manager.replay_failed_instance("t_x#0")
    settle(manager)
    manager.replay_failed_instance("t_x#1", {"go": {"ok": True}})
    settle(manager)
    found = {
        i.name: (i.status, i.parent, i.depth) for i in manager.storage.instances_of_task("t_x")
    }
    assert found == {
        "t_x#0": ("replayed", None, 0),
        "t_x#1": ("replayed", "t_x#0", 1),
        "t_x#2": ("finished", "t_x#1", 2),
    }


@pytest.mark.parametrize("status_task", ["finished", "unstarted", "replayed", "skipped"])
def test_replay_and_skip_need_a_failed_instance(manager: TriggerManager, status_task: str) -> None:
    manager.update_configuration(
        {
            "t_done": {"after": ["a"], "run": PASS},
            "t_wait": {"after": ["a", "never"], "run": PASS},
            "t_x": {"after": ["go"], "run": P + "FlakyTask"},
        }
    )
    manager.fire("a")
    manager.fire("go")
    settle(manager)
    if status_task == "replayed":
        manager.replay_failed_instance("t_x#0")
        name = "t_x#0"
    elif status_task == "skipped":
        manager.skip_failed_instance("t_x#0")
        name = "t_x#0"
    else:
        name = {"finished": "t_done#0", "unstarted": "t_wait#0"}[status_task]
    settle(manager)
    assert manager.storage[name].status == status_task
    before = manager.storage.debug_repr()
    for action in (manager.replay_failed_instance, manager.skip_failed_instance):
        with pytest.raises(ValueError) as info:
            action(name)
        message = str(info.value)
        assert repr(name) in message and repr(status_task) in message and "'failed'" in message
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


UNKNOWN = ["t_x#9", "t_nope#0", "no-hash"]


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_instance_names_raise_key_error(manager: TriggerManager, name: str) -> None:
    failed_session(manager)
    before = manager.storage.debug_repr()
    calls: list[Callable[[], Any]] = [
        lambda: manager.replay_failed_instance(name),
        lambda: manager.skip_failed_instance(name),
        lambda: manager.skip_failed_instance(name, cascade=True),
        lambda: manager.update_instance_status(name, "finished"),
        lambda: manager.update_instance_metadata(name, {"a": 1}),
        lambda: manager.mark_instance_logs_resolved(name),
        lambda: manager.storage[name],
    ]
    for call in calls:
        with pytest.raises(KeyError) as info:
            call()
        assert repr(name) in str(info.value)
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


# --- skip ---------------------------------------------------------------------------------------
def test_skip_without_cascade(manager: TriggerManager) -> None:
    failed = failed_session(manager)
    skipped = manager.skip_failed_instance(failed)
    assert skipped.name == "t_x#0" and skipped.status == "skipped"
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "skipped"
    assert "skipped" in instance.metadata["timestamps"]
    assert "result" not in instance.metadata
    assert instance.is_resolved and instance.logs_resolved
    assert "t_next#0" not in manager.storage
    assert "t_x" not in manager.storage.latest_kwargs


def test_skip_with_cascade_and_result(manager: TriggerManager) -> None:
    failed_session(manager)
    manager.skip_failed_instance("t_x#0", cascade=True, result={"subjectId": 7})
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "skipped"
    assert instance.metadata["result"] == {"subjectId": 7}
    assert manager.storage["t_next#0"].metadata["result"] == {
        "kwargs": {"t_x": {"subjectId": 7}}
    }
    assert manager.storage.latest_kwargs["t_x"] == {"subjectId": 7}


def test_skip_with_cascade_defaults_to_empty_result(manager: TriggerManager) -> None:
    failed_session(manager)
    manager.skip_failed_instance("t_x#0", cascade=True)
    settle(manager)
    assert manager.storage["t_next#0"].metadata["result"] == {"kwargs": {"t_x": {}}}


# --- status and metadata updates ------------------------------------------------------------------
def test_update_instance_status_with_metadata_and_timestamps(manager: TriggerManager) -> None:
    failed_session(manager)
    before = manager.storage["t_x#0"].metadata["timestamps"]
    updated = manager.update_instance_status("t_x#0", "abandoned", {"by": "admin"})
    assert updated.status == "abandoned"
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "abandoned"
    assert instance.metadata["by"] == "admin"
    assert instance.metadata["exceptionType"] == "sample_tasks.SampleError"  # merged, not replaced
    stamps = instance.metadata["timestamps"]
    for status in ("unstarted", "scheduled", "running", "failed", "abandoned"):
        assert status in stamps
    assert stamps["created"] == before["created"]
    assert stamps["lastModified"] == stamps["abandoned"] >= before["lastModified"]
    assert instance.last_modified == stamps["lastModified"]
    assert "t_next#0" not in manager.storage


def test_update_instance_status_with_cascade(manager: TriggerManager) -> None:
    failed_session(manager)
    manager.update_instance_status(
        manager.storage["t_x#0"], "finished", {"result": {"n": 2}}, cascade=True,
        cascade_kwargs={"n": 2},
    )
    settle(manager)
    assert manager.storage["t_x#0"].status == "finished"
    assert manager.storage["t_next#0"].metadata["result"] == {"kwargs": {"t_x": {"n": 2}}}


def test_update_instance_status_rejects_unknown_status(manager: TriggerManager) -> None:
    failed_session(manager)
    before = manager.storage.debug_repr()
    with pytest.raises(ValueError) as info:
        manager.update_instance_status("t_x#0", "done")
    assert "'t_x#0'" in str(info.value) and "'done'" in str(info.value)
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


def test_update_instance_metadata_merges(manager: TriggerManager) -> None:
    failed = failed_session(manager)
    updated = manager.update_instance_metadata(failed, {"note": "looked at", "n": [1]})
    assert updated.metadata["note"] == "looked at"
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "failed"
    assert instance.metadata["note"] == "looked at" and instance.metadata["n"] == [1]
    assert instance.metadata["exceptionType"] == "sample_tasks.SampleError"
    assert instance.last_modified >= failed.last_modified  # type: ignore[operator]


def test_mark_instance_logs_resolved(manager: TriggerManager) -> None:
    failed_session(manager)
    assert [i.name for i in manager.storage.get_instances_with_unresolved_logs()] == ["t_x#0"]
    assert not manager.storage["t_x#0"].logs_resolved
    marked = manager.mark_instance_logs_resolved("t_x#0")
    assert marked.metadata["logsResolved"] is True
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.logs_resolved and instance.status == "failed"
    assert manager.storage.get_instances_with_unresolved_logs() == []
    assert [i.name for i in manager.storage.get_unresolved_instances()] == ["t_x#0"]


# --- hooks ----------------------------------------------------------------------------------------


def test_post_replay_receives_the_replayed_instance(hook_manager: HookRecordingManager) -> None:
    failed_session(hook_manager)
    HookRecordingManager.calls.clear()
    clone = hook_manager.replay_failed_instance("t_x#0", {"go": {"ok": True}})
    assert ("replay", "t_x#0", "replayed", [clone.name]) in HookRecordingManager.calls


def test_post_replay_runs_for_task_retries(hook_manager: HookRecordingManager) -> None:
    hook_manager.update_configuration({"t_r": {"after": ["go"], "run": P + "RetryOnceTask"}})
    hook_manager.fire("go", {"retry": {}})
    settle(hook_manager)
    replays = [c for c in HookRecordingManager.calls if c[0] == "replay"]
    assert replays == [("replay", "t_r#0", "replayed", ["t_r#1"])]


def test_post_skip_runs_after_the_cascade(hook_manager: HookRecordingManager) -> None:
    failed_session(hook_manager)
    HookRecordingManager.calls.clear()
    hook_manager.skip_failed_instance("t_x#0", cascade=True, result={"a": 1})
    skip_calls = [c for c in HookRecordingManager.calls if c[0] == "skip"]
    # When the hook ran, the cascade had already created (and dispatched) t_next#0.
    assert skip_calls == [("skip", "t_x#0", "skipped", True, ["t_next#0", "t_x#0"])]
    fire_calls = [c for c in HookRecordingManager.calls if c[0] == "fire" and c[1] == "t_x"]
    assert fire_calls == [("fire", "t_x", [("t_next#0", "scheduled")])]
    assert HookRecordingManager.calls.index(fire_calls[0]) < HookRecordingManager.calls.index(
        skip_calls[0]
    )


def test_post_skip_without_cascade(hook_manager: HookRecordingManager) -> None:
    failed_session(hook_manager)
    HookRecordingManager.calls.clear()
    hook_manager.skip_failed_instance("t_x#0")
    assert HookRecordingManager.calls == [("skip", "t_x#0", "skipped", False, ["t_x#0"])]


# --- stuck instances --------------------------------------------------------------------------
def test_recover_stuck_scheduled_instances(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["go"], "run": PASS}})
    with manager.storage.acquire_lock() as locked:
        locked.create_instance("t_x", kwargs={"go": {"lost": True}}, status="scheduled")
        locked.create_instance("t_x", kwargs={"go": {}}, status="running")
        locked.save()
    recovered = manager.recover_stuck_instances()
    assert [i.name for i in recovered] == ["t_x#0"]
    settle(manager)
    assert manager.storage["t_x#0"].status == "finished"
    assert manager.storage["t_x#0"].metadata["result"] == {"kwargs": {"go": {"lost": True}}}
    assert manager.storage["t_x#1"].status == "running"
    # Nothing young enough is touched; running ones only when asked.
    assert manager.recover_stuck_instances(older_than=3600, statuses=("running",)) == []
    again = manager.recover_stuck_instances(statuses=("scheduled", "running"))
    assert [i.name for i in again] == ["t_x#1"]
    settle(manager)
    assert manager.storage["t_x#1"].status == "finished"
    assert manager.recover_stuck_instances() == []
