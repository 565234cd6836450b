"""SPEC section 6: the protocol around ``_run``, skip, retry, TaskContext."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celery
import pytest

from sample_tasks import (
    P,
    PirateRunner,
    PirateTriggerManager,
    RecordingTask,
    settle,
)
from triggers.manager import TriggerManager, rebuild_manager, trigger_managers
from triggers.runners import task_runners
from triggers.runners.base import build_message
from triggers.storages.base import BaseTriggerStorage
from triggers.task import (
    MaxRetriesExceeded,
    Retry,
    StatusChange,
    TaskContext,
    TriggerTask,
    resolve_task,
)
from triggers.testing import threading_runner
from triggers.types import TaskInstance

PASS = "triggers.testing.PassThruTask"


def run_one(manager: TriggerManager, run: str, **directives: Any) -> TaskInstance:
    """Configure ``t_x`` (after ``go``, plus a downstream ``t_next``), fire ``go``
    with ``directives.pop('kwargs')`` and return ``t_x#0`` once everything ended."""
    kwargs = directives.pop("kwargs", {})
    manager.update_configuration(
        {
            "t_x": {"after": ["go"], "run": run, **directives},
            "t_next": {"after": ["t_x"], "run": PASS},
        }
    )
    manager.fire("go", kwargs)
    settle(manager)
    return manager.storage["t_x#0"]


def test_running_records_actual_kwargs_then_finished_with_result(manager: TriggerManager) -> None:
    instance = run_one(
        manager,
        P + "RecordingTask",
        kwargs={"n": 1},
        withParams={"go": {"default": True}, "cfg": {"k": "v"}},
    )
    assert instance.status == "finished"
    expected_kwargs = {"go": {"n": 1, "default": True}, "cfg": {"k": "v"}}
    assert instance.metadata["actualKwargs"] == expected_kwargs
    result = instance.metadata["result"]
    assert result["status"] == "running"  # what _run saw
    assert result["instance"] == "t_x#0"
    assert result["triggerKwargs"] == expected_kwargs
    assert result["uid"] == manager.storage.uid
    assert result["storage"] == type(manager.storage).__qualname__
    assert result["manager"] == "TriggerManager"
    stamps = instance.metadata["timestamps"]
    assert {"created", "lastModified", "unstarted", "scheduled", "running", "finished"} <= set(
        stamps
    )
    assert stamps["created"] <= stamps["scheduled"] <= stamps["running"] <= stamps["finished"]
    assert stamps["lastModified"] == stamps["finished"]
    # The success cascaded: t_next got the result as the kwargs of trigger t_x.
    assert manager.storage["t_next#0"].metadata["result"] == {"kwargs": {"t_x": result}}


def test_none_result_counts_as_empty_mapping(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "NoneTask")
    assert instance.status == "finished"
    assert instance.metadata["result"] == {}
    assert manager.storage["t_next#0"].metadata["result"] == {"kwargs": {"t_x": {}}}


def test_non_mapping_result_fails_with_clear_message(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "ListTask")
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "builtins.TypeError"
    info = instance.metadata["exceptionInfo"]
    assert "t_x#0" in info and "must return a mapping" in info and "list" in info
    assert "result" not in instance.metadata
    assert "t_next#0" not in manager.storage  # no cascade


def test_non_json_result_fails_with_clear_message(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "NonJsonTask")
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "triggers.exceptions.InvalidTriggerKwargs"
    assert "JSON-serializable" in instance.metadata["exceptionInfo"]
    assert "t_next#0" not in manager.storage


def test_exception_fails_with_type_traceback_and_context(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "ContextFailingTask")
    assert instance.status == "failed"
    meta = instance.metadata
    assert meta["exceptionType"] == "sample_tasks.SampleError"
    assert meta["exceptionInfo"].startswith("Traceback (most recent call last):")
    assert "row 7 is broken" in meta["exceptionInfo"]
    assert "ContextFailingTask" in meta["exceptionInfo"] or "_run" in meta["exceptionInfo"]
    context = meta["exceptionContext"]
    assert context["row"] == 7 and context["sheet"] == "people"
    assert context["instance"] == "t_x#0"
    assert context["session"] == manager.storage.uid
    assert meta["logLevel"] == 40
    assert "timestamps" in meta and "failed" in meta["timestamps"]
    assert "t_next#0" not in manager.storage


def test_builtin_exception_type_is_module_dot_class(manager: TriggerManager) -> None:
    instance = run_one(manager, "triggers.testing.FailingTask")
    assert instance.metadata["exceptionType"] == "builtins.RuntimeError"
    assert "failed on purpose" in instance.metadata["exceptionInfo"]


def test_exception_is_reraised_to_the_caller(manager: TriggerManager) -> None:
    """Called as a worker would call it, the task re-raises after recording."""
    manager.update_configuration({"t_x": {"after": ["go"], "run": P + "ContextFailingTask"}})
    with manager.storage.acquire_lock() as locked:
        instance = locked.create_instance("t_x", kwargs={"go": {}}, status="scheduled")
        locked.save()
    task = resolve_task(P + "ContextFailingTask")
    from sample_tasks import SampleError

    with pytest.raises(SampleError, match="row 7"):
        task.execute(build_message(manager, instance), manager_class=TriggerManager)
    manager.storage.invalidate_cache()
    assert manager.storage["t_x#0"].status == "failed"


def test_instance_not_scheduled_is_not_run_again(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "RecordingTask")
    assert instance.status == "finished"
    task = resolve_task(P + "RecordingTask")
    assert task.execute(build_message(manager, instance), manager_class=TriggerManager) is None
    manager.storage.invalidate_cache()
    assert manager.storage["t_x#0"] == instance
    assert len(manager.storage.instances_of_task("t_next")) == 1


def test_missing_run_method_fails_the_instance(manager: TriggerManager) -> None:
    instance = run_one(manager, "triggers.task.TriggerTask")
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "builtins.NotImplementedError"


def test_skip_marks_instance_skipped_with_metadata(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "SkipWithMetadataTask", kwargs={"a": 1})
    assert instance.status == "skipped"
    assert instance.metadata["why"] == "not needed"
    assert instance.metadata["seen"] == ["go"]
    assert "exceptionType" not in instance.metadata
    assert "skipped" in instance.metadata["timestamps"]
    assert "t_next#0" not in manager.storage
    assert instance.logs_resolved


def test_retry_with_cooldown_replacement_kwargs_and_metadata(manager: TriggerManager) -> None:
    retry = {
        "cooldown": 0.05,
        "replacement_kwargs": {"other": {"z": 1}},
        "metadata": {"attempt": "first"},
        "error": "flaky",
    }
    first = run_one(
        manager,
        P + "RetryOnceTask",
        kwargs={"retry": retry},
        withParams={"cfg": {"p": 1}},
    )
    assert first.status == "replayed"
    assert first.metadata["attempt"] == "first"
    assert first.metadata["exceptionType"] == "sample_tasks.SampleError"
    assert "flaky" in first.metadata["exceptionInfo"]
    assert "replayed" in first.metadata["timestamps"]
    assert first.is_resolved and first.logs_resolved
    clone = manager.storage["t_x#1"]
    assert clone.status == "finished"
    assert clone.parent == "t_x#0" and clone.metadata["parent"] == "t_x#0"
    assert clone.depth == 1 and clone.metadata["depth"] == 1
    assert clone.cooldown == 0.05 and clone.metadata["cooldown"] == 0.05
    # Replacement kwargs replace the instance kwargs completely; withParams still apply.
    assert clone.kwargs == {"other": {"z": 1}}
    assert clone.metadata["result"] == {
        "depth": 1,
        "parent": "t_x#0",
        "triggerKwargs": {"other": {"z": 1}, "cfg": {"p": 1}},
    }
    # Only the clone's success cascaded.
    assert [i.name for i in manager.storage.instances_of_task("t_next")] == ["t_next#0"]
    assert manager.storage["t_next#0"].metadata["result"]["kwargs"]["t_x"]["depth"] == 1


def test_retry_without_replacement_keeps_kwargs(manager: TriggerManager) -> None:
    run_one(manager, P + "RetryOnceTask", kwargs={"retry": {}, "n": 5})
    clone = manager.storage["t_x#1"]
    assert clone.kwargs == {"go": {"retry": {}, "n": 5}}
    assert clone.cooldown is None
    assert clone.metadata["result"]["triggerKwargs"] == {"go": {"retry": {}, "n": 5}}


def test_max_retries_exceeded_fails_the_instance(manager: TriggerManager) -> None:
    run_one(manager, P + "AlwaysRetryTask")
    found = {i.name: (i.status, i.depth, i.parent) for i in manager.storage}
    assert found == {
        "t_x#0": ("replayed", 0, None),
        "t_x#1": ("replayed", 1, "t_x#0"),
        "t_x#2": ("failed", 2, "t_x#1"),
    }
    last = manager.storage["t_x#2"]
    assert last.metadata["exceptionType"] == "triggers.task.MaxRetriesExceeded"
    assert "max_retries is 2" in last.metadata["exceptionInfo"]
    assert "t_next#0" not in manager.storage


def test_retry_and_skip_objects() -> None:
    task = RecordingTask()
    skip = task.skip({"a": 1})
    assert isinstance(skip, StatusChange) and skip.status == "skipped"
    assert skip.metadata == {"a": 1}
    assert issubclass(Retry, StatusChange)
    assert issubclass(MaxRetriesExceeded, Exception)
    with pytest.raises(RuntimeError, match="no task instance is running"):
        task.retry()


# --- the manager a task sees -----------------------------------------------------------------
@pytest.fixture
def pirate(storage: BaseTriggerStorage) -> Iterator[PirateTriggerManager]:
    trigger_managers.register("pirate", PirateTriggerManager)
    task_runners.register("pirate-threads", PirateRunner)
    PirateRunner.ran.clear()
    PirateTriggerManager.calls.clear()
    try:
        with threading_runner():
            yield PirateTriggerManager(storage)
            settle(TriggerManager(storage))
    finally:
        trigger_managers.unregister("pirate")
        task_runners.unregister("pirate-threads")
        PirateRunner.ran.clear()
        PirateTriggerManager.calls.clear()


def test_context_manager_is_the_same_registered_type(pirate: PirateTriggerManager) -> None:
    pirate.update_configuration(
        {
            "t_a": {"after": ["x"], "run": P + "RecordingTask"},
            "t_b": {"after": ["t_a"], "run": P + "RecordingTask"},
            "t_fire": {"after": ["t_b"], "run": P + "FiringTask", "withParams": {
                "go": {"fire": "from_task"}}},
            "t_last": {"after": ["from_task"], "run": P + "RecordingTask"},
        }
    )
    pirate.fire("x")
    settle(pirate)
    storage = pirate.storage
    for name in ("t_a#0", "t_b#0", "t_last#0"):
        assert storage[name].status == "finished", storage[name].metadata
        assert storage[name].metadata["result"]["manager"] == "PirateTriggerManager"
    assert storage["t_fire#0"].metadata["result"] == {
        "fired": "from_task",
        "scheduled": ["t_last#0"],
        "manager": "PirateTriggerManager",
    }
    # The subclass's runner ran everything, cascades included...
    assert sorted(PirateRunner.ran) == ["t_a#0", "t_b#0", "t_fire#0", "t_last#0"]
    # ...and its hooks ran in the task threads too.
    fired = sorted(c[1] for c in PirateTriggerManager.calls)
    assert fired == ["from_task", "t_a", "t_b", "t_fire", "t_last", "x"]


def test_worker_rebuilds_the_registered_manager(pirate: PirateTriggerManager) -> None:
    pirate.update_configuration({"t_a": {"after": ["x"], "run": P + "RecordingTask"}})
    instance = pirate.fire("x")[0]
    message = build_message(pirate, instance)
    assert message["manager"] == "pirate"
    assert message["uid"] == pirate.storage.uid
    assert message["instance"] == "t_a#0"
    rebuilt = rebuild_manager(message)
    assert type(rebuilt) is PirateTriggerManager
    assert rebuilt.storage.uid == pirate.storage.uid
    assert type(rebuilt.storage) is type(pirate.storage)
    assert rebuilt.get_runner_key(instance.config) == "pirate-threads"


def test_using_overrides_manager_default_runner(pirate: PirateTriggerManager) -> None:
    pirate.update_configuration(
        {"t_a": {"after": ["x"], "run": P + "RecordingTask", "using": "threading"}}
    )
    pirate.fire("x")
    settle(pirate)
    assert pirate.storage["t_a#0"].status == "finished"
    assert PirateRunner.ran == []


# --- filter_kwargs -----------------------------------------------------------------------------
def test_filter_kwargs_with_filters_library(manager: TriggerManager) -> None:
    instance = run_one(manager, P + "FiltersTask", kwargs={}, withParams={})
    # "go" is not "order": the required id is reported missing.
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "builtins.ValueError"
    assert "order.id: This value is required" in instance.metadata["exceptionInfo"]

    manager.update_configuration(
        {"t_f": {"after": ["order"], "run": P + "FiltersTask"}}
    )
    manager.fire("order", {"id": "42", "note": "kept"})
    settle(manager)
    assert manager.storage["t_f#0"].metadata["result"] == {
        "cleaned": {"id": 42, "qty": 1, "note": "kept"}
    }


def test_filter_kwargs_invalid_values_listed(manager: TriggerManager) -> None:
    manager.update_configuration({"t_f": {"after": ["order"], "run": P + "FiltersTask"}})
    manager.fire("order", {"id": "abc", "qty": "many"})
    settle(manager)
    instance = manager.storage["t_f#0"]
    assert instance.status == "failed"
    info = instance.metadata["exceptionInfo"]
    assert "ValueError: invalid trigger kwargs" in info
    assert "order.id: Numeric value expected" in info
    assert "order.qty: Numeric value expected" in info
    assert set(instance.metadata["exceptionContext"]["filter_errors"]) == {"order.id", "order.qty"}


def test_filter_kwargs_with_pydantic(manager: TriggerManager) -> None:
    manager.update_configuration({"t_p": {"after": ["order"], "run": P + "PydanticTask"}})
    manager.fire("order", {"id": "7"})
    settle(manager)
    assert manager.storage["t_p#0"].metadata["result"] == {
        "perTrigger": {"order": {"id": 7, "qty": 1}},
        "whole": {"order": {"id": 7, "qty": 1}},
    }


def test_filter_kwargs_with_pydantic_invalid(manager: TriggerManager) -> None:
    manager.update_configuration({"t_p": {"after": ["order"], "run": P + "PydanticTask"}})
    manager.fire("order", {"id": "x", "qty": "y"})
    settle(manager)
    instance = manager.storage["t_p#0"]
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "builtins.ValueError"
    assert len(instance.metadata["exceptionContext"]["filter_errors"]) == 2
    info = instance.metadata["exceptionInfo"]
    assert "invalid trigger kwargs: order.id:" in info
    assert "order.qty:" in info


def test_filter_kwargs_on_a_context_directly() -> None:
    import filters as f

    from sample_tasks import Order

    config = TaskConfig_for("t_x")
    instance = TaskInstance("t_x#0", config, "running", kwargs={"order": {"id": "3"}})
    context = TaskContext(None, instance, {"order": {"id": "3"}})  # type: ignore[arg-type]
    assert context.filter_kwargs({"order": {"id": f.Int}}) == {"order": {"id": 3}}
    assert context.filter_kwargs({"order": Order}) == {"order": {"id": 3, "qty": 1}}
    with pytest.raises(ValueError) as info:
        context.filter_kwargs({"order": {"id": f.Required | f.Int}, "page": {"n": f.Required}})
    assert str(info.value) == "invalid trigger kwargs: page.n: This value is required. (empty)"
    with pytest.raises(ValueError, match=r"order\.qty: Input should be a valid integer"):
        TaskContext(
            None,  # type: ignore[arg-type]
            instance,
            {"order": {"id": 1, "qty": "lots"}},
        ).filter_kwargs({"order": Order})


def TaskConfig_for(name: str) -> Any:  # noqa: N802 - reads like a constructor
    from triggers.types import TaskConfig

    return TaskConfig.from_dict(name, {"after": ["order"], "run": PASS})


# --- Celery registration ---------------------------------------------------------------------
class RegisteredTask(TriggerTask):
    name = "myapp.tasks.Registered"

    def _run(self, context: TaskContext) -> dict[str, Any]:
        return {"registered": True, "kwargs": context.trigger_kwargs}


APP = celery.Celery("triggers-test-protocol", set_as_current=False)
REGISTERED = APP.register_task(RegisteredTask())


def test_task_registered_on_a_celery_app_is_found_by_name(manager: TriggerManager) -> None:
    assert resolve_task("myapp.tasks.Registered") is REGISTERED
    manager.update_configuration({"t_r": {"after": ["go"], "run": "myapp.tasks.Registered"}})
    manager.fire("go", {"a": 1})
    settle(manager)
    assert manager.storage["t_r#0"].metadata["result"] == {
        "registered": True,
        "kwargs": {"go": {"a": 1}},
    }


@pytest.mark.parametrize(
    "how, error, fragment",
    [
        ("skip", "triggers.exceptions.InvalidTriggerKwargs", "metadata of status 'skipped'"),
        ("retry-kwargs", "triggers.exceptions.InvalidTriggerKwargs", "JSON-serializable"),
        ("retry-metadata", "triggers.exceptions.InvalidTriggerKwargs", "metadata"),
        ("cooldown", "builtins.ValueError", "cooldown must be a non-negative number"),
    ],
)
def test_unstorable_skip_or_retry_fails_instead_of_staying_running(
    manager: TriggerManager, how: str, error: str, fragment: str
) -> None:
    instance = run_one(manager, P + "BadStatusChangeTask", kwargs={"how": how})
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == error
    assert fragment in instance.metadata["exceptionInfo"]
    assert instance.metadata["logLevel"] == 40
    assert [i.name for i in manager.storage] == ["t_x#0"]  # no clone, no cascade
