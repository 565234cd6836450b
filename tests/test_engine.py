"""Engine cases that need a real session (beyond the property tests)."""

from __future__ import annotations

import pytest


def test_waiting_instance_made_ready_by_a_configuration_change_runs_on_next_fire(manager):
    manager.update_configuration({"t_a": {"after": ["x", "y"], "run": "triggers.testing.DevNullTask"}})
    manager.fire("x")
    manager.update_configuration({"t_a": {"after": ["x"], "run": "triggers.testing.DevNullTask"}})
    # Changing the configuration re-applies nothing by itself...
    assert manager.storage["t_a#0"].status == "unstarted"
    # ...but the next fire of a trigger the task uses re-checks every waiting instance.
    scheduled = manager.fire("x")
    assert [i.name for i in scheduled] == ["t_a#0"]


def test_unknown_instance_error_names_the_session(manager):
    with pytest.raises(KeyError, match=manager.storage.uid):
        manager.update_instance_metadata("t_nope#0", {"a": 1})
