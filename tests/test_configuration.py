"""SPEC section 3: configuration directives, TaskConfig, updates and loading files."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sample_tasks import P, settle
from triggers.config import load_configuration_file, parse_configuration
from triggers.exceptions import ConfigurationError, TriggersError
from triggers.manager import TriggerManager
from triggers.types import TaskConfig

PASS = "triggers.testing.PassThruTask"


def test_every_directive_is_parsed_into_task_config(manager: TriggerManager) -> None:
    tasks = manager.update_configuration(
        {
            "t_full": {
                "after": ["a", "b"],
                "run": PASS,
                "andEvery": "e",
                "unless": ["u1", "u2"],
                "withParams": {"a": {"x": 1}, "cfg": {"deep": {"k": "v"}}},
                "using": "threading",
                "label": "Full task",
                "priority": 3,
            }
        }
    )
    stored = manager.storage.tasks["t_full"]
    for config in (tasks["t_full"], stored):
        assert config.name == "t_full"
        assert config.after == {"a", "b", "e"}
        assert config.run == PASS
        assert config.and_every == "e"
        assert config.unless == {"u1", "u2"}
        assert config.with_params == {"a": {"x": 1}, "cfg": {"deep": {"k": "v"}}}
        assert config.using == "threading"
        assert config.extras == {"label": "Full task", "priority": 3}
        assert config.extra == config.extras
        for trigger in ("a", "b", "e", "u1", "u2"):
            assert config.uses_trigger(trigger)
        assert not config.uses_trigger("t_full")
        assert not config.uses_trigger("other")


def test_minimal_task_has_empty_defaults(manager: TriggerManager) -> None:
    manager.update_configuration({"t_min": {"after": ["a"], "run": PASS}})
    config = manager.storage.tasks["t_min"]
    assert config.after == {"a"}
    assert config.and_every is None
    assert config.unless == set()
    assert config.with_params == {}
    assert config.using is None
    assert config.extras == {}


@pytest.mark.parametrize("after", [["a", "b"], {"a", "b"}, ("b", "a"), frozenset({"a", "b"})])
def test_after_accepts_list_or_set(after: Any, manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": after, "run": PASS}})
    assert manager.storage.tasks["t_x"].after == {"a", "b"}
    manager.fire("b", {"n": 2})
    manager.fire("a", {"n": 1})
    settle(manager)
    assert manager.storage["t_x#0"].metadata["result"] == {
        "kwargs": {"a": {"n": 1}, "b": {"n": 2}}
    }


def test_and_every_is_implicitly_part_of_after(manager: TriggerManager) -> None:
    manager.update_configuration({"t_each": {"after": [], "andEvery": "row", "run": PASS}})
    assert manager.storage.tasks["t_each"].after == {"row"}
    manager.fire("row", {"i": 1})
    settle(manager)
    assert manager.storage["t_each#0"].status == "finished"
    assert manager.storage["t_each#0"].metadata["result"] == {"kwargs": {"row": {"i": 1}}}


def test_and_every_with_other_after_triggers_waits_for_them(manager: TriggerManager) -> None:
    manager.update_configuration({"t_each": {"after": ["ready"], "andEvery": "row", "run": PASS}})
    assert manager.storage.tasks["t_each"].after == {"ready", "row"}
    manager.fire("row", {"i": 1})
    settle(manager)
    assert manager.storage["t_each#0"].status == "unstarted"
    manager.fire("ready")
    settle(manager)
    assert manager.storage["t_each#0"].metadata["result"] == {
        "kwargs": {"ready": {}, "row": {"i": 1}}
    }


def test_unless_abandons(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a", "b"], "unless": ["stop"], "run": PASS}})
    manager.fire("a")
    manager.fire("stop", {"why": "cancelled"})
    manager.fire("b")
    settle(manager)
    instance = manager.storage["t_x#0"]
    assert instance.status == "abandoned"
    assert instance.abandon_state == {"stop": {"why": "cancelled"}}
    assert "result" not in instance.metadata


def test_with_params_merged_recursively_under_fired_kwargs(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_x": {
                "after": ["a"],
                "run": PASS,
                "withParams": {
                    "a": {"keep": 1, "override": "param", "nested": {"p": 1, "both": "param"}},
                    "extra": {"only": "param"},
                },
            }
        }
    )
    manager.fire("a", {"override": "fired", "nested": {"f": 2, "both": "fired"}, "new": True})
    settle(manager)
    instance = manager.storage["t_x#0"]
    expected = {
        "a": {
            "keep": 1,
            "override": "fired",
            "nested": {"p": 1, "f": 2, "both": "fired"},
            "new": True,
        },
        "extra": {"only": "param"},
    }
    assert instance.metadata["result"] == {"kwargs": expected}
    assert instance.metadata["actualKwargs"] == expected
    # The instance keeps only what was fired; withParams stay in the configuration.
    assert instance.kwargs == {
        "a": {"override": "fired", "nested": {"f": 2, "both": "fired"}, "new": True}
    }


def test_using_selects_the_runner(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "run": PASS, "using": "threading"}})
    assert manager.get_runner_key(manager.storage.tasks["t_x"]) == "threading"
    manager.fire("a")
    settle(manager)
    assert manager.storage["t_x#0"].status == "finished"


def test_update_adds_and_replaces_and_keeps_other_tasks(manager: TriggerManager) -> None:
    manager.update_configuration(
        {
            "t_a": {"after": ["a"], "run": PASS},
            "t_b": {"after": ["b"], "run": PASS},
        }
    )
    manager.update_configuration(
        {
            "t_b": {"after": ["b2"], "run": "triggers.testing.DevNullTask"},
            "t_c": {"after": ["c"], "run": PASS},
        }
    )
    tasks = manager.storage.tasks
    assert sorted(tasks) == ["t_a", "t_b", "t_c"]
    assert tasks["t_a"].after == {"a"}
    assert tasks["t_b"].after == {"b2"}
    assert tasks["t_b"].run == "triggers.testing.DevNullTask"
    # The replaced task no longer reacts to its old trigger.
    assert manager.fire("b") == []
    assert [i.name for i in manager.fire("b2")] == ["t_b#0"]
    settle(manager)
    assert manager.storage["t_b#0"].metadata["result"] == {}


def test_configuration_change_does_not_reapply_earlier_triggers(manager: TriggerManager) -> None:
    manager.fire("a", {"n": 1})
    manager.update_configuration({"t_late": {"after": ["a"], "run": PASS}})
    settle(manager)
    assert len(manager.storage) == 0
    assert manager.storage.get_unresolved_tasks()[0].name == "t_late"
    # Firing again runs it, with the new kwargs.
    manager.fire("a", {"n": 2})
    settle(manager)
    assert manager.storage["t_late#0"].metadata["result"] == {"kwargs": {"a": {"n": 2}}}


def test_new_instance_after_config_change_starts_with_earlier_kwargs(
    manager: TriggerManager,
) -> None:
    """Triggers are not re-applied, but a task created later still starts with the
    latest kwargs of its other triggers once one of its triggers fires (SPEC 4.1)."""
    manager.fire("a", {"n": 1})
    manager.update_configuration({"t_late": {"after": ["a", "b"], "run": PASS}})
    assert len(manager.storage) == 0
    manager.fire("b", {"m": 1})
    settle(manager)
    assert manager.storage["t_late#0"].metadata["result"] == {
        "kwargs": {"a": {"n": 1}, "b": {"m": 1}}
    }


def test_task_config_round_trips_through_to_dict() -> None:
    config = TaskConfig.from_dict(
        "t_x",
        {
            "after": ["b", "a"],
            "run": PASS,
            "andEvery": "e",
            "unless": ["u"],
            "withParams": {"a": {"x": 1}},
            "using": "threading",
            "note": "hi",
        },
    )
    data = config.to_dict()
    assert data == {
        "after": ["a", "b"],
        "run": PASS,
        "andEvery": "e",
        "unless": ["u"],
        "withParams": {"a": {"x": 1}},
        "using": "threading",
        "note": "hi",
    }
    assert TaskConfig.from_dict("t_x", data) == config


# --- loading files -------------------------------------------------------------------
CONFIG = {
    "t_import": {"after": ["page1", "complete"], "run": PASS},
    "t_notify": {"after": ["t_import"], "run": "triggers.testing.DevNullTask", "note": "x"},
}


def test_load_json_file(tmp_path: Any, manager: TriggerManager) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG), encoding="utf-8")
    loaded = load_configuration_file(path)
    assert loaded == CONFIG
    manager.update_configuration(loaded)
    assert sorted(manager.storage.tasks) == ["t_import", "t_notify"]
    assert manager.storage.tasks["t_notify"].extras == {"note": "x"}


def test_load_yaml_file(tmp_path: Any) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "config.yaml"
    path.write_text(
        "t_import:\n"
        "  after: [page1, complete]\n"
        f"  run: {PASS}\n"
        "t_notify:\n"
        "  after:\n    - t_import\n"
        "  run: triggers.testing.DevNullTask\n"
        "  note: x\n",
        encoding="utf-8",
    )
    assert load_configuration_file(str(path)) == CONFIG


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a mapping of task names"),
        ('{"t_x": {"run": "x"}}', "'after'"),
    ],
)
def test_load_invalid_file(tmp_path: Any, text: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_configuration_file(path)
    assert fragment in str(info.value)


# --- invalid configurations ----------------------------------------------------------
INVALID: list[tuple[str, Any, str | None, str]] = [
    # (case id, directives of t_bad, directive named, message fragment)
    ("missing after", {"run": PASS}, "after", "missing"),
    ("missing run", {"after": ["a"]}, "run", "missing"),
    ("after is a string", {"after": "a", "run": PASS}, "after", "list of trigger names"),
    ("after is a dict", {"after": {"a": 1}, "run": PASS}, "after", "list of trigger names"),
    ("after holds a number", {"after": ["a", 3], "run": PASS}, "after", "3"),
    ("after holds empty name", {"after": [""], "run": PASS}, "after", "non-empty"),
    ("after empty without andEvery", {"after": [], "run": PASS}, "after", "andEvery"),
    ("run not a string", {"after": ["a"], "run": 42}, "run", "42"),
    ("run empty", {"after": ["a"], "run": "  "}, "run", "non-empty"),
    ("andEvery is a list", {"after": [], "andEvery": ["e"], "run": PASS}, "andEvery", "single"),
    ("andEvery empty", {"after": ["a"], "andEvery": "", "run": PASS}, "andEvery", "single"),
    ("unless is a string", {"after": ["a"], "unless": "u", "run": PASS}, "unless", "list"),
    ("withParams a list", {"after": ["a"], "withParams": [1], "run": PASS}, "withParams", "dict"),
    (
        "withParams not dict of dicts",
        {"after": ["a"], "withParams": {"a": 1}, "run": PASS},
        "withParams",
        "dict of dicts",
    ),
    (
        "withParams not JSON",
        {"after": ["a"], "withParams": {"a": {"x": object()}}, "run": PASS},
        "withParams",
        "JSON",
    ),
    ("using not a string", {"after": ["a"], "using": 1, "run": PASS}, "using", "runner key"),
    ("using unknown", {"after": ["a"], "using": "nope", "run": PASS}, "using", "'nope'"),
    ("extra not JSON", {"after": ["a"], "run": PASS, "x": {1, 2}}, "extras", "JSON"),
    ("directives not a mapping", ["after", "run"], None, "mapping of directives"),
]


@pytest.mark.parametrize(
    "directives, directive, fragment", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_configuration_rejected_and_nothing_stored(
    manager: TriggerManager, directives: Any, directive: str | None, fragment: str
) -> None:
    manager.update_configuration({"t_ok": {"after": ["a"], "run": PASS}})
    manager.fire("b", {"v": 1})
    before = manager.storage.debug_repr()
    with pytest.raises(ConfigurationError) as info:
        # A valid task in the same update must not be stored either.
        manager.update_configuration(
            {"t_new": {"after": ["a"], "run": PASS}, "t_bad": directives}
        )
    error = info.value
    assert isinstance(error, TriggersError) and isinstance(error, ValueError)
    assert error.task == "t_bad"
    assert error.directive == directive
    message = str(error)
    assert "'t_bad'" in message
    if directive is not None:
        assert repr(directive) in message
    assert fragment in message
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


@pytest.mark.parametrize(
    "configuration, fragment",
    [
        (["t_x"], "mapping of task names"),
        ({"": {"after": ["a"], "run": PASS}}, "non-empty strings"),
        ({3: {"after": ["a"], "run": PASS}}, "non-empty strings"),
        ({"t#1": {"after": ["a"], "run": PASS}}, "'#'"),
    ],
)
def test_invalid_task_names_rejected(
    manager: TriggerManager, configuration: Any, fragment: str
) -> None:
    before = manager.storage.debug_repr()
    with pytest.raises(ConfigurationError) as info:
        manager.update_configuration(configuration)
    assert fragment in str(info.value)
    manager.storage.invalidate_cache()
    assert manager.storage.debug_repr() == before


def test_parse_configuration_is_pure() -> None:
    tasks = parse_configuration({"t_x": {"after": ["a"], "run": PASS, "andEvery": "e"}})
    assert tasks["t_x"].after == {"a", "e"}


def test_run_naming_a_module_path_is_stored_verbatim(manager: TriggerManager) -> None:
    manager.update_configuration({"t_x": {"after": ["a"], "run": P + "RecordingTask"}})
    assert manager.storage.tasks["t_x"].run == "sample_tasks.RecordingTask"
