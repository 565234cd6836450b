"""Engine cases that need a real session (beyond the property tests)."""

from __future__ import annotations

import pytest


def test_waiting_instance_made_ready_by_a_configuration_change_runs_on_next_fire(manager):
    run = "triggers.testing.DevNullTask"
    manager.update_configuration({"t_a": {"after": ["x", "y"], "run": run}})
    manager.fire("x")
    manager.update_configuration({"t_a": {"after": ["x"], "run": run}})
    # Changing the configuration re-applies nothing by itself...
    assert manager.storage["t_a#0"].status == "unstarted"
    # ...but the next fire of a trigger the task uses re-checks every waiting instance.
    scheduled = manager.fire("x")
    assert [i.name for i in scheduled] == ["t_a#0"]


def test_unknown_instance_error_names_the_session(manager):
    with pytest.raises(KeyError, match=manager.storage.uid):
        manager.update_instance_metadata("t_nope#0", {"a": 1})


@pytest.mark.parametrize(
    "directives, directive",
    [
        ({"after": [], "andEvery": "t_self"}, "andEvery"),
        ({"after": ["t_self"]}, "after"),
        ({"after": ["a"], "unless": ["t_self"]}, "unless"),
    ],
)
def test_a_task_cannot_wait_for_its_own_cascade(manager, directives, directive):
    from triggers.exceptions import ConfigurationError

    before = manager.storage.debug_repr()
    with pytest.raises(ConfigurationError, match=f"'t_self'.*'{directive}'.*itself"):
        manager.update_configuration(
            {"t_self": {**directives, "run": "triggers.testing.DevNullTask"}}
        )
    assert manager.storage.debug_repr() == before


def test_skip_records_a_given_result_without_cascading(manager):
    from triggers.runners.threading import ThreadingTaskRunner

    manager.update_configuration(
        {
            "t_a": {"after": ["x"], "run": "triggers.testing.FailingTask"},
            "t_b": {"after": ["t_a"], "run": "triggers.testing.DevNullTask"},
        }
    )
    manager.fire("x")
    ThreadingTaskRunner.join_all()
    skipped = manager.skip_failed_instance("t_a#0", result={"id": 7})
    assert skipped.status == "skipped" and skipped.metadata["result"] == {"id": 7}
    manager.storage.invalidate_cache()
    assert "t_b#0" not in manager.storage


def test_a_backend_whose_extra_is_missing_says_which_extra(monkeypatch):
    import sys

    from triggers.registry import ClassRegistry, MissingDependencyError

    registry: ClassRegistry[object] = ClassRegistry("triggers.storages", "storage backend")
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    monkeypatch.delitem(sys.modules, "triggers.storages.redis", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'triggers\[redis\]'"):
        registry.get_class("redis")
