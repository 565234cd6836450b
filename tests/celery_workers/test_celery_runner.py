"""The Celery runner's checks, the decorator form and the wait helper (no worker).

Every refusal happens before the step that would schedule the instance
commits: the fire raises and nothing of it is stored.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import celery
import pytest

from triggers.celery_support import FunctionTriggerTask, trigger_task, wait_for_session
from triggers.exceptions import ConfigurationError, DispatchError, TaskNotFoundError
from triggers.manager import TriggerManager
from triggers.runners.celery import CeleryTaskRunner, InvalidCeleryOptions, celery_options
from triggers.storages.memory import MemoryStorageBackend
from triggers.task import TaskContext, TriggerTask, resolve_task
from triggers.testing import threading_runner
from triggers.types import TaskConfig, TaskInstance

from . import tasks as app_module

RECORD_TASK = f"{app_module.__name__}.RecordTask"


@pytest.fixture
def manager() -> Iterator[TriggerManager]:
    storage = MemoryStorageBackend(f"celery-unit-{uuid.uuid4().hex}")
    yield TriggerManager(storage)
    storage.delete_session()


def _assert_nothing_stored(manager: TriggerManager, trigger: str) -> None:
    manager.storage.invalidate_cache()
    assert manager.storage.instances == {}
    assert trigger not in manager.storage.latest_kwargs


# --- registration ----------------------------------------------------------------
def test_class_registered_with_register_task_is_named_module_dot_class() -> None:
    task = app_module.app.tasks[RECORD_TASK]
    assert type(task) is app_module.RecordTask
    assert resolve_task(RECORD_TASK) is task


def test_decorated_functions_are_trigger_tasks_calling_the_function() -> None:
    record_fn = app_module.app.tasks["triggers_test.record_fn"]
    decorated = app_module.app.tasks["triggers_test.decorated"]
    assert isinstance(record_fn, FunctionTriggerTask)
    assert isinstance(decorated, FunctionTriggerTask)
    # the message is the framework's: Celery's signature check must not apply
    assert not hasattr(record_fn, "__header__")
    # Celery copies @app.task tasks to every app of the process: any copy will do
    # for resolve_task(); the Celery runner picks the app (see the test below).
    assert isinstance(resolve_task("triggers_test.record_fn"), FunctionTriggerTask)


def test_function_task_runs_with_context_and_bind(manager: TriggerManager) -> None:
    app = app_module.app
    name = f"triggers_test.unit_{uuid.uuid4().hex[:8]}"

    @trigger_task(app, name=name)
    def double(context: TaskContext) -> dict[str, int]:
        return {"double": context.trigger_kwargs["go"]["n"] * 2}

    @app.task(base=FunctionTriggerTask, name=name + "_bound", bind=True)
    def bound(self: TriggerTask, context: TaskContext) -> dict[str, str]:
        return {"task": self.name, "instance": context.task_instance.name}

    assert app.tasks[name] is double
    manager.update_configuration(
        {
            "t_double": {"after": ["go"], "run": name},
            "t_bound": {"after": ["go"], "run": name + "_bound"},
        }
    )
    with threading_runner():
        manager.fire("go", {"n": 21})
        instances = wait_for_session(manager, timeout=10)
    assert instances["t_double#0"].metadata["result"] == {"double": 42}
    assert instances["t_bound#0"].metadata["result"] == {
        "task": name + "_bound",
        "instance": "t_bound#0",
    }


def test_trigger_task_refuses_other_bases_and_serializers() -> None:
    with pytest.raises(TypeError, match="base must be TriggerTask"):
        trigger_task(app_module.app, base=celery.Task)
    with pytest.raises(ValueError, match="always JSON"):
        trigger_task(app_module.app, serializer="pickle")
    with pytest.raises(TypeError, match="expected a Celery app"):
        trigger_task("not an app")  # type: ignore[call-overload]


def test_shared_trigger_task_reaches_every_app() -> None:
    name = f"triggers_test.shared_{uuid.uuid4().hex[:8]}"

    @trigger_task(name=name)
    def shared(context: TaskContext) -> None:
        return None

    fresh = celery.Celery("fresh", set_as_current=False)
    assert isinstance(fresh.tasks[name], FunctionTriggerTask)


def test_autodiscovery_finds_trigger_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = f"autodisc_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "tasks.py").write_text(
        textwrap.dedent(
            f"""
            from triggers.celery_support import trigger_task

            @trigger_task(name="{package}.hello")
            def hello(context):
                return {{"hello": context.task_instance.name}}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = celery.Celery(package, set_as_current=False)
    try:
        app.autodiscover_tasks([package], force=True)
        assert isinstance(app.tasks[f"{package}.hello"], FunctionTriggerTask)
    finally:
        for module in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[module]


def _resolve_in_new_thread(runner: CeleryTaskRunner, instance: TaskInstance) -> object:
    """runner.resolve() from a thread with no current Celery app (like a web request)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(runner.resolve(instance))
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert outcome, "resolve() did not return within 10 s"
    return outcome[0]


def test_task_copied_to_several_apps_resolves_without_guessing(
    manager: TriggerManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CeleryTaskRunner, "celery_app", None)
    main = app_module.app
    other = celery.Celery("other", set_as_current=False, broker="memory://")
    try:
        # Celery copied the @app.task tasks of the test app to the new app.
        assert "triggers_test.record_fn" in other.tasks
        manager.update_configuration(
            {"t_a": {"after": ["x", "y"], "run": "triggers_test.record_fn"}}
        )
        manager.fire("x")
        instance = manager.storage["t_a#0"]
        runner = CeleryTaskRunner()
        main.set_current()  # this thread's current app wins
        assert runner.resolve(instance).app is main
        # a thread with no current app: two brokers, no default -> refuse, no guess
        refused = _resolve_in_new_thread(runner, instance)
        assert isinstance(refused, DispatchError)
        assert "several Celery apps" in str(refused) and "memory://" in str(refused)
        monkeypatch.setattr(CeleryTaskRunner, "celery_app", other)  # pinned
        assert _resolve_in_new_thread(runner, instance).app is other  # type: ignore[attr-defined]
    finally:
        other.close()


# --- refusals ----------------------------------------------------------------------
def test_eager_mode_is_refused_with_the_reason(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": RECORD_TASK}})
    app_module.app.conf.task_always_eager = True
    try:
        with pytest.raises(DispatchError, match="task_always_eager") as excinfo:
            manager.fire("go")
    finally:
        app_module.app.conf.task_always_eager = False
    assert "'t_a'" in str(excinfo.value)
    assert "threading" in str(excinfo.value)
    _assert_nothing_stored(manager, "go")


def test_unknown_run_name_is_named(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": "no.such.task"}})
    with pytest.raises(TaskNotFoundError, match=r"'t_a'.*'no\.such\.task'"):
        manager.fire("go")
    _assert_nothing_stored(manager, "go")


def test_trigger_task_class_not_registered_on_an_app_is_refused(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": "triggers.testing.DevNullTask"}})
    with pytest.raises(TaskNotFoundError, match="not registered on the Celery app"):
        manager.fire("go")
    _assert_nothing_stored(manager, "go")


def test_plain_celery_task_is_refused(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": "triggers_test.plain"}})
    with pytest.raises(TaskNotFoundError, match="does not extend TriggerTask"):
        manager.fire("go")
    _assert_nothing_stored(manager, "go")


def test_app_not_accepting_json_is_refused(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": RECORD_TASK}})
    conf = app_module.app.conf
    previous = conf.accept_content
    conf.accept_content = ["pickle"]
    try:
        with pytest.raises(DispatchError, match="does not accept JSON"):
            manager.fire("go")
    finally:
        conf.accept_content = previous
    _assert_nothing_stored(manager, "go")


@pytest.mark.parametrize(
    ("directives", "directive", "expected"),
    [
        ({"queue": ""}, "queue", "non-empty string"),
        ({"queue": 5}, "queue", "non-empty string"),
        ({"priority": 300}, "priority", "0 to 255"),
        ({"priority": "high"}, "priority", "0 to 255"),
        ({"celeryOptions": ["queue"]}, "celeryOptions", "dict of apply_async options"),
        ({"celeryOptions": {"serializer": "pickle"}}, "celeryOptions", "unsupported option"),
        ({"celeryOptions": {"expires": -1}}, "celeryOptions", "non-negative number"),
    ],
)
def test_invalid_routing_directives_are_refused(
    manager: TriggerManager, directives: dict, directive: str, expected: str
) -> None:
    manager.update_configuration({"t_a": {"after": ["go"], "run": RECORD_TASK, **directives}})
    with pytest.raises(InvalidCeleryOptions, match=expected) as excinfo:
        manager.fire("go")
    assert isinstance(excinfo.value, ConfigurationError)
    assert excinfo.value.task == "t_a"
    assert excinfo.value.directive == directive
    _assert_nothing_stored(manager, "go")


def test_routing_directives_become_apply_async_options() -> None:
    config = TaskConfig(
        name="t_a",
        after=frozenset({"go"}),
        run=RECORD_TASK,
        extras={
            "queue": "fast",
            "celeryOptions": {"priority": 3, "routing_key": "rk", "expires": 60},
        },
    )
    assert celery_options(config) == {
        "queue": "fast",
        "priority": 3,
        "routing_key": "rk",
        "expires": 60,
    }


# --- wait_for_session ------------------------------------------------------------------
def test_wait_for_session_times_out_listing_pending_instances(manager: TriggerManager) -> None:
    manager.update_configuration({"t_a": {"after": ["x", "y"], "run": RECORD_TASK}})
    manager.fire("x")
    manager.update_instance_status("t_a#0", "running")
    with pytest.raises(TimeoutError, match=r"t_a#0 \(running\)"):
        wait_for_session(manager.storage, timeout=0.2, poll=0.05)
    manager.update_instance_status("t_a#0", "finished")
    instances = wait_for_session(manager, timeout=0.2)
    assert instances["t_a#0"].status == "finished"


def test_wait_for_session_checks_its_arguments(manager: TriggerManager) -> None:
    with pytest.raises(TypeError, match="storage or a TriggerManager"):
        wait_for_session("session-uid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        wait_for_session(manager, timeout=-1)
    with pytest.raises(ValueError, match="poll"):
        wait_for_session(manager, poll=0)


def test_celery_decorator_with_trigger_task_base_makes_the_function_run() -> None:
    name = f"triggers_test.plain_base_{uuid.uuid4().hex[:8]}"

    @app_module.app.task(name=name, base=TriggerTask)
    def body(context: TaskContext) -> dict:
        return {"seen": context.trigger_kwargs}

    assert isinstance(body, TriggerTask)
    assert type(body)._trigger_function is not None
    context = TaskContext(manager=None, task_instance=None, trigger_kwargs={"a": {"x": 1}})  # type: ignore[arg-type]
    assert body._run(context) == {"seen": {"a": {"x": 1}}}
