"""SPEC section 4: firing triggers, AND-joins, andEvery, unless, cascades, hooks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sample_tasks import HookRecordingManager, P, new_gate, settle
from triggers.manager import TriggerManager
from triggers.types import TaskInstance

PASS = "triggers.testing.PassThruTask"


def statuses(manager: TriggerManager) -> dict[str, str]:
    settle(manager)
    return {i.name: i.status for i in manager.storage}


@pytest.mark.parametrize("order", list(itertools.permutations(["a", "b", "c"])))
def test_and_join_in_any_order(manager: TriggerManager, order: tuple[str, ...]) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b", "c"], "run": PASS}})
    for position, trigger in enumerate(order):
        scheduled = manager.fire(trigger, {"n": trigger})
        settle(manager)
        instance = manager.storage["t_x#0"]
        if position < 2:
            assert scheduled == []
            assert instance.status == "unstarted"
            assert sorted(instance.kwargs) == sorted(order[: position + 1])
        else:
            assert [i.name for i in scheduled] == ["t_x#0"]
    assert manager.storage["t_x#0"].status == "finished"
    assert manager.storage["t_x#0"].metadata["result"] == {
        "kwargs": {"a": {"n": "a"}, "b": {"n": "b"}, "c": {"n": "c"}}
    }
    assert len(manager.storage) == 1


def test_one_shot_runs_once_even_if_triggers_refire(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    manager.fire("a", {"v": 1})
    manager.fire("a", {"v": 2})  # the waiting instance keeps the first kwargs
    manager.fire("b", {"v": 1})
    for _ in range(2):
        assert manager.fire("a", {"v": 3}) == []
        assert manager.fire("b", {"v": 3}) == []
    assert statuses(manager) == {"t_x#0": "finished"}
    assert manager.storage["t_x#0"].metadata["result"] == {
        "kwargs": {"a": {"v": 1}, "b": {"v": 1}}
    }
    latest = manager.storage.latest_kwargs
    assert (latest["a"], latest["b"]) == ({"v": 3}, {"v": 3})


def test_and_every_one_instance_per_firing_with_latest_other_kwargs(
    manager: TriggerManager,
) -> None:
    manager.update_configuration({"t_row": {"after": ["sheet"], "andEvery": "row", "run": PASS}})
    manager.fire("sheet", {"v": 1})
    manager.fire("row", {"i": 1})
    manager.fire("row", {"i": 2})
    manager.fire("sheet", {"v": 2})  # not andEvery: creates nothing
    manager.fire("row", {"i": 3})
    assert set(statuses(manager).values()) == {"finished"}
    assert len(manager.storage) == 3
    results = [manager.storage[f"t_row#{n}"].metadata["result"]["kwargs"] for n in range(3)]
    assert results == [
        {"sheet": {"v": 1}, "row": {"i": 1}},
        {"sheet": {"v": 1}, "row": {"i": 2}},
        {"sheet": {"v": 2}, "row": {"i": 3}},
    ]


def test_waiting_instances_take_later_triggers(manager: TriggerManager) -> None:
    manager.update_configuration({"t_row": {"after": ["sheet"], "andEvery": "row", "run": PASS}})
    manager.fire("row", {"i": 1})
    manager.fire("row", {"i": 2})
    assert statuses(manager) == {"t_row#0": "unstarted", "t_row#1": "unstarted"}
    scheduled = manager.fire("sheet", {"v": 9})
    assert sorted(i.name for i in scheduled) == ["t_row#0", "t_row#1"]
    assert statuses(manager) == {"t_row#0": "finished", "t_row#1": "finished"}
    assert manager.storage["t_row#1"].metadata["result"] == {
        "kwargs": {"sheet": {"v": 9}, "row": {"i": 2}}
    }


def test_and_every_firing_taken_by_waiting_instance_creates_none(
    manager: TriggerManager,
) -> None:
    """An andEvery trigger that an unstarted instance still lacks goes to that
    instance instead of creating a new one (SPEC 4.1)."""
    manager.update_configuration({"t_row": {"after": ["sheet"], "andEvery": "row", "run": PASS}})
    manager.fire("sheet", {"v": 1})  # creates t_row#0, waiting for row
    assert statuses(manager) == {"t_row#0": "unstarted"}
    manager.fire("row", {"i": 1})
    assert statuses(manager) == {"t_row#0": "finished"}


def test_unless_needs_all_of_its_triggers(manager: TriggerManager) -> None:
    manager.update_configuration(
        {"t_x": {"after": ["a", "b"], "unless": ["u1", "u2"], "run": PASS}}
    )
    manager.fire("a")
    manager.fire("u1")
    assert statuses(manager) == {"t_x#0": "unstarted"}
    manager.fire("u2", {"z": 1})
    assert statuses(manager) == {"t_x#0": "abandoned"}
    assert manager.storage["t_x#0"].abandon_state == {"u1": {}, "u2": {"z": 1}}
    assert manager.fire("b") == []
    assert statuses(manager) == {"t_x#0": "abandoned"}


def test_unless_partial_does_not_stop_the_task(manager: TriggerManager) -> None:
    manager.update_configuration(
        {"t_x": {"after": ["a", "b"], "unless": ["u1", "u2"], "run": PASS}}
    )
    manager.fire("u1")
    manager.fire("a")
    manager.fire("b")
    assert statuses(manager) == {"t_x#0": "finished"}


def test_unless_completed_first_means_task_never_runs(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_once": {"after": ["a"], "unless": ["stop"], "run": PASS},
            "t_each": {"after": [], "andEvery": "a", "unless": ["stop"], "run": PASS},
        }
    )
    manager.fire("stop")
    assert statuses(manager) == {"t_once#0": "abandoned", "t_each#0": "abandoned"}
    assert manager.fire("a") == []
    assert manager.fire("a") == []
    # Each andEvery firing creates an instance that starts with the earlier "stop"
    # and is abandoned at once; the one-shot task gets no new instance.
    assert statuses(manager) == {
        "t_once#0": "abandoned",
        "t_each#0": "abandoned",
        "t_each#1": "abandoned",
        "t_each#2": "abandoned",
    }
    assert manager.storage["t_each#2"].abandon_state == {"stop": {}}


def test_unless_leaves_finished_instances_alone(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "unless": ["stop"], "run": PASS}})
    manager.fire("a")
    settle(manager)
    before = manager.storage["t_x#0"]
    assert before.status == "finished"
    manager.fire("stop")
    settle(manager)
    after = manager.storage["t_x#0"]
    assert after.status == "finished"
    assert after.abandon_state == {}
    assert after.metadata == before.metadata


def test_unless_leaves_running_instances_alone(manager: TriggerManager) -> None:
    gate = new_gate("unless-running")
    manager.update_configuration(
        {"t_x": {"after": ["go"], "unless": ["stop"], "run": P + "BlockingTask"}}
    )
    manager.fire("go", {"gate": "unless-running"})
    assert gate.started.wait(10)
    manager.fire("stop")
    manager.storage.invalidate_cache()
    assert manager.storage["t_x#0"].status == "running"
    gate.release.set()
    assert statuses(manager) == {"t_x#0": "finished"}
    assert manager.storage["t_x#0"].abandon_state == {}


def test_unless_abandons_only_unstarted_instances_of_and_every(manager: TriggerManager) -> None:
    manager.update_configuration(
        {"t_row": {"after": ["sheet"], "andEvery": "row", "unless": ["stop"], "run": PASS}}
    )
    manager.fire("sheet")
    manager.fire("row", {"i": 0})  # runs
    settle(manager)
    manager.fire("sheet2")  # unrelated
    manager.update_configuration(
        {"t_wait": {"after": ["never"], "andEvery": "row", "unless": ["stop"], "run": PASS}}
    )
    manager.fire("row", {"i": 1})  # t_row#1 runs, t_wait#0 waits for "never"
    settle(manager)
    manager.fire("stop")
    assert statuses(manager) == {
        "t_row#0": "finished",
        "t_row#1": "finished",
        "t_wait#0": "abandoned",
    }


def test_instance_names_count_per_task(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_x": {"after": [], "andEvery": "e", "run": PASS},
            "t_y": {"after": [], "andEvery": "e", "run": PASS},
        }
    )
    names = []
    for _ in range(3):
        names += sorted(i.name for i in manager.fire("e"))
    assert names == ["t_x#0", "t_y#0", "t_x#1", "t_y#1", "t_x#2", "t_y#2"]
    settle(manager)
    assert [i.name for i in manager.storage.instances_of_task("t_x")] == [
        "t_x#0",
        "t_x#1",
        "t_x#2",
    ]


def test_three_step_cascade_carries_results(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_one": {"after": ["start"], "run": PASS},
            "t_two": {"after": ["t_one"], "run": PASS},
            "t_three": {"after": ["t_two", "start"], "run": PASS},
        }
    )
    scheduled = manager.fire("start", {"x": 1})
    assert [i.name for i in scheduled] == ["t_one#0"]
    settle(manager)
    one = {"kwargs": {"start": {"x": 1}}}
    two = {"kwargs": {"t_one": one}}
    assert manager.storage["t_one#0"].metadata["result"] == one
    assert manager.storage["t_two#0"].metadata["result"] == two
    assert manager.storage["t_three#0"].metadata["result"] == {
        "kwargs": {"t_two": two, "start": {"x": 1}}
    }
    assert manager.storage.latest_kwargs == {"start": {"x": 1}, "t_one": one, "t_two": two,
                                              "t_three": manager.storage["t_three#0"]
                                              .metadata["result"]}


def test_latest_kwargs_recorded_per_trigger(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    manager.fire("a", {"v": 1})
    manager.fire("a", {"v": 2})
    manager.fire("unused", {"w": [1, 2]})
    manager.fire("empty")
    settle(manager)
    assert manager.storage.latest_kwargs == {"a": {"v": 2}, "unused": {"w": [1, 2]}, "empty": {}}
    assert manager.storage.metadata["latest_kwargs"] == manager.storage.latest_kwargs


def test_unused_trigger_is_recorded_and_used_by_later_tasks(manager: TriggerManager) -> None:
    assert manager.fire("early", {"n": 1}) == []
    settle(manager)
    assert manager.storage.latest_kwargs == {"early": {"n": 1}}
    assert len(manager.storage) == 0
    assert manager.storage.debug_repr()["metadata"]["latest_kwargs"] == {"early": {"n": 1}}


def test_fire_returns_the_scheduled_instances(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_a": {"after": ["x"], "run": PASS},
            "t_b": {"after": ["x", "y"], "run": PASS},
            "t_c": {"after": ["y"], "run": PASS},
        }
    )
    scheduled = manager.fire("x", {"k": 1})
    assert [i.name for i in scheduled] == ["t_a#0"]
    assert all(isinstance(i, TaskInstance) for i in scheduled)
    assert scheduled[0].status == "scheduled"
    assert scheduled[0].kwargs == {"x": {"k": 1}}
    assert sorted(i.name for i in manager.fire("y")) == ["t_b#0", "t_c#0"]
    assert manager.fire("z") == []


def test_fire_defaults_kwargs_to_empty_mapping(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["x"], "run": PASS}})
    manager.fire("x")
    settle(manager)
    assert manager.storage["t_a#0"].kwargs == {"x": {}}
    assert manager.storage.latest_kwargs == {"x": {}, "t_a": {"kwargs": {"x": {}}}}


def test_scheduled_instance_is_committed_before_dispatch(manager: TriggerManager) -> None:
    """A task that starts at once sees its instance as scheduled, then running."""
    manager.update_configuration({"t_a": {"after": ["x"], "run": P + "RecordingTask"}})
    manager.fire("x")
    settle(manager)
    result = manager.storage["t_a#0"].metadata["result"]
    assert result["status"] == "running"
    assert "scheduled" in manager.storage["t_a#0"].metadata["timestamps"]


# --- the _post_fire hook -------------------------------------------------------------------


def test_post_fire_hook_gets_trigger_and_scheduled_instances(
    hook_manager: HookRecordingManager,
) -> None:
    hook_manager.update_configuration(
        {
            "t_a": {"after": ["x"], "run": PASS},
            "t_b": {"after": ["t_a"], "run": "triggers.testing.DevNullTask"},
        }
    )
    hook_manager.fire("nothing")
    hook_manager.fire("x", {"v": 1})
    settle(hook_manager)
    calls = HookRecordingManager.calls
    assert calls[0] == ("fire", "nothing", [])
    # Cascades run the hook too, on a manager of the same class in the task thread
    # (so their order relative to the caller's hook is not fixed).
    assert sorted(calls[1:]) == [
        ("fire", "t_a", [("t_b#0", "scheduled")]),
        ("fire", "t_b", []),
        ("fire", "x", [("t_a#0", "scheduled")]),
    ]


def test_sessions_are_isolated(manager: TriggerManager, storage_factory: Any) -> None:
    other = TriggerManager(storage_factory())
    config = {"t_x": {"after": ["a", "b"], "run": PASS}}
    manager.update_configuration(config)
    other.update_configuration(config)
    manager.fire("a", {"in": "one"})
    other.fire("b", {"in": "two"})
    settle(manager)
    settle(other)
    assert manager.storage["t_x#0"].kwargs == {"a": {"in": "one"}}
    assert other.storage["t_x#0"].kwargs == {"b": {"in": "two"}}
    assert manager.storage.latest_kwargs == {"a": {"in": "one"}}
    assert other.storage.latest_kwargs == {"b": {"in": "two"}}


def test_waiting_instance_follows_a_changed_configuration(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    manager.fire("a", {"n": 1})
    manager.update_configuration({"t_x": {"after": ["a", "c"], "run": PASS}})
    assert manager.fire("b") == []
    assert [i.name for i in manager.fire("c", {"n": 3})] == ["t_x#0"]
    settle(manager)
    assert manager.storage["t_x#0"].metadata["result"] == {
        "kwargs": {"a": {"n": 1}, "c": {"n": 3}}
    }
