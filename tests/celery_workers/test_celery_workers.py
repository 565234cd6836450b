"""Trigger tasks on real Celery workers, over Redis and RabbitMQ.

Every test runs once per broker against the module's worker subprocess(es);
the session lives in a SQLite file the worker opens through the path carried
in the task message. Every wait is bounded (``WAIT`` seconds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from triggers.celery_support import wait_for_session
from triggers.runners.base import build_message
from triggers.task import resolve_task

from . import tasks as app_module
from .conftest import _delete_queues, start_worker

pytestmark = [pytest.mark.celery, pytest.mark.timeout(120)]

#: Bound (seconds) of every wait for a session to settle.
WAIT = 20.0
#: Celery's generated name for the class registered with app.register_task().
RECORD_TASK = f"{app_module.__name__}.RecordTask"


def _statuses(instances: dict) -> dict[str, str]:
    return {name: instance.status for name, instance in instances.items()}


def _describe(instances: dict) -> str:
    return "\n".join(
        f"{i.name}: {i.status} {i.metadata.get('exceptionInfo') or ''}" for i in instances.values()
    )


def test_and_join_fired_out_of_order(worker: Any, make_manager) -> None:
    manager = make_manager()
    manager.update_configuration({"t_join": {"after": ["x", "y"], "run": RECORD_TASK}})
    manager.fire("y", {"b": 2})
    manager.storage.invalidate_cache()
    assert manager.storage["t_join#0"].status == "unstarted"
    scheduled = manager.fire("x", {"a": 1})
    assert [i.name for i in scheduled] == ["t_join#0"]

    instances = wait_for_session(manager, timeout=WAIT)
    join = instances["t_join#0"]
    assert join.status == "finished", _describe(instances)
    assert join.metadata["result"] == {
        "kwargs": {"x": {"a": 1}, "y": {"b": 2}},
        "hostname": worker.hostname,
    }
    runs = app_module.read_probe(manager.storage.path)
    assert [r["instance"] for r in runs] == ["t_join#0"]
    assert runs[0]["pid"] == worker.process.pid


def test_three_step_cascade_over_every_registration_form(worker: Any, make_manager) -> None:
    manager = make_manager()
    manager.update_configuration(
        {
            # class registered with app.register_task(RecordTask())
            "t_one": {"after": ["start"], "run": RECORD_TASK},
            # function with @trigger_task(app, name=...)
            "t_two": {"after": ["t_one"], "run": "triggers_test.record_fn"},
            # function with @app.task(base=FunctionTriggerTask, bind=True)
            "t_three": {"after": ["t_two"], "run": "triggers_test.decorated"},
        }
    )
    manager.fire("start", {"n": 1})

    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {
        "t_one#0": "finished",
        "t_two#0": "finished",
        "t_three#0": "finished",
    }, _describe(instances)
    one = instances["t_one#0"].metadata["result"]
    assert one == {"kwargs": {"start": {"n": 1}}, "hostname": worker.hostname}
    # each step receives the previous step's result as its trigger's kwargs
    two = instances["t_two#0"].metadata["result"]
    assert two["kwargs"] == {"t_one": one}
    assert instances["t_three#0"].metadata["result"] == {
        "task": "triggers_test.decorated",
        "hostname": worker.hostname,
    }
    runs = app_module.read_probe(manager.storage.path)
    assert [r["instance"] for r in runs] == ["t_one#0", "t_two#0", "t_three#0"]


def test_and_every_runs_once_per_firing(worker: Any, make_manager) -> None:
    manager = make_manager()
    manager.update_configuration(
        {"t_each": {"after": ["setup"], "andEvery": "tick", "run": "triggers_test.record_fn"}}
    )
    manager.fire("setup", {"s": 1})
    for n in range(3):
        manager.fire("tick", {"n": n})

    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {f"t_each#{n}": "finished" for n in range(3)}, _describe(
        instances
    )
    for n in range(3):
        assert instances[f"t_each#{n}"].metadata["result"]["kwargs"] == {
            "setup": {"s": 1},
            "tick": {"n": n},
        }


def test_failed_task_replayed_with_new_kwargs(worker: Any, make_manager) -> None:
    manager = make_manager()
    manager.update_configuration({"t_fragile": {"after": ["go"], "run": "triggers_test.fragile"}})
    manager.fire("go", {"fixed": False})

    instances = wait_for_session(manager, timeout=WAIT)
    failed = instances["t_fragile#0"]
    assert failed.status == "failed", _describe(instances)
    assert failed.metadata["exceptionType"] == "builtins.RuntimeError"
    assert "not fixed yet" in failed.metadata["exceptionInfo"]

    clone = manager.replay_failed_instance("t_fragile#0", {"go": {"fixed": True}})
    assert clone.name == "t_fragile#1"
    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {
        "t_fragile#0": "replayed",
        "t_fragile#1": "finished",
    }, _describe(instances)
    # replacement kwargs replace the clone's kwargs, they are not merged
    assert instances["t_fragile#1"].metadata["result"] == {"kwargs": {"go": {"fixed": True}}}
    assert instances["t_fragile#1"].metadata["parent"] == "t_fragile#0"


def test_retry_with_cooldown_is_a_countdown(worker: Any, make_manager) -> None:
    cooldown = 1.0
    manager = make_manager()
    manager.update_configuration(
        {
            "t_retry": {
                "after": ["go"],
                "run": "triggers_test.retry_once",
                "withParams": {"retry": {"cooldown": cooldown}},
            }
        }
    )
    manager.fire("go")

    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {
        "t_retry#0": "replayed",
        "t_retry#1": "finished",
    }, _describe(instances)
    parent, clone = instances["t_retry#0"], instances["t_retry#1"]
    assert clone.metadata["cooldown"] == cooldown
    assert clone.metadata["depth"] == 1
    assert clone.metadata["result"] == {"depth": 1}
    # Recorded timestamps (data, not the test's duration): the clone started
    # no earlier than `cooldown` after its parent became replayed. 10 ms of
    # slack covers the broker's ETA resolution.
    replayed_at = parent.metadata["timestamps"]["replayed"]
    clone_started = clone.metadata["timestamps"]["running"]
    assert clone_started - replayed_at >= cooldown - 0.01, (replayed_at, clone_started)
    runs = {r["instance"]: r["started"] for r in app_module.read_probe(manager.storage.path)}
    assert runs["t_retry#1"] - replayed_at >= cooldown - 0.01


def test_custom_manager_hooks_run_in_the_worker(worker: Any, make_manager) -> None:
    manager = make_manager(app_module.MarkerManager)
    manager.update_configuration(
        {
            "t_first": {"after": ["start"], "run": "triggers_test.record_fn"},
            "t_second": {"after": ["t_first"], "run": "triggers_test.record_fn"},
        }
    )
    manager.fire("start")

    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {
        "t_first#0": "finished",
        "t_second#0": "finished",
    }, _describe(instances)
    hooks = app_module.read_probe(manager.storage.path, "hooks")
    by_trigger = {h["trigger"]: h for h in hooks}
    assert set(by_trigger) == {"start", "t_first", "t_second"}
    assert by_trigger["start"]["pid"] == os.getpid()
    assert by_trigger["start"]["scheduled"] == ["t_first#0"]
    # The worker rebuilt a MarkerManager from the message; its cascades ran the hook.
    for trigger, scheduled in (("t_first", ["t_second#0"]), ("t_second", [])):
        assert by_trigger[trigger]["pid"] == worker.process.pid
        assert by_trigger[trigger]["hostname"] == worker.hostname
        assert by_trigger[trigger]["scheduled"] == scheduled


def test_duplicate_delivery_runs_the_task_once(worker: Any, make_manager) -> None:
    manager = make_manager()
    manager.update_configuration(
        {
            "t_dup": {"after": ["go"], "run": RECORD_TASK},
            "t_sentinel": {"after": ["later"], "run": RECORD_TASK},
        }
    )
    (instance,) = manager.fire("go")  # published once by the runner...
    message = build_message(manager, instance)
    task = resolve_task(RECORD_TASK)
    for _ in range(2):  # ...and the very same message twice more
        task.apply_async(kwargs=message, serializer="json")
    # The one-thread worker (prefetch 1) consumes its queue in order: once the sentinel has run,
    # all three deliveries of t_dup#0 have been handled.
    manager.fire("later")

    instances = wait_for_session(manager, timeout=WAIT)
    assert _statuses(instances) == {
        "t_dup#0": "finished",
        "t_sentinel#0": "finished",
    }, _describe(instances)
    runs = [r["instance"] for r in app_module.read_probe(manager.storage.path)]
    assert runs == ["t_dup#0", "t_sentinel#0"]
    assert worker.log().count("t_dup#0 is finished, not scheduled; not running it again") == 2


def test_routing_to_a_named_queue(
    worker: Any, special_worker: Any, queues: tuple[str, str], make_manager
) -> None:
    default_queue, special_queue = queues
    manager = make_manager()
    manager.update_configuration(
        {
            # routed by the app's task_routes
            "t_routed": {"after": ["go"], "run": "triggers_test.routed"},
            # routed by the task's `queue` directive
            "t_queued": {"after": ["go"], "run": "triggers_test.record_fn", "queue": special_queue},
            # default queue
            "t_default": {"after": ["go"], "run": "triggers_test.record_fn"},
        }
    )
    manager.fire("go")

    instances = wait_for_session(manager, timeout=WAIT)
    assert {n: i.status for n, i in instances.items()} == {
        "t_default#0": "finished",
        "t_queued#0": "finished",
        "t_routed#0": "finished",
    }, _describe(instances)
    hostnames = {n: i.metadata["result"]["hostname"] for n, i in instances.items()}
    assert hostnames == {
        "t_default#0": worker.hostname,
        "t_queued#0": special_worker.hostname,
        "t_routed#0": special_worker.hostname,
    }
    assert special_worker.queues == (special_queue,)
    assert worker.queues == (default_queue,)


def test_worker_killed_mid_task_leaves_it_running_until_recovered(
    worker: Any, queues: tuple[str, str], make_manager, tmp_path_factory: pytest.TempPathFactory
) -> None:
    crash_queue = f"{queues[0]}.crash"
    logs = tmp_path_factory.mktemp("crash")
    manager = make_manager()
    manager.update_configuration(
        {"t_slow": {"after": ["go"], "run": "triggers_test.sleepy", "queue": crash_queue}}
    )
    doomed = start_worker(worker.broker, (crash_queue,), "crash1", logs)
    try:
        manager.fire("go")
        deadline = time.monotonic() + WAIT
        while not app_module.read_probe(manager.storage.path):
            assert time.monotonic() < deadline, "t_slow#0 never started"
            time.sleep(0.02)
        doomed.process.kill()  # SIGKILL mid-task: no ack, no status change
        doomed.process.wait(timeout=10)
    finally:
        doomed.stop()
    manager.storage.invalidate_cache()
    assert manager.storage["t_slow#0"].status == "running"

    # Once the worker is known to be gone, an operator (or a periodic job) requeues it.
    recovered = manager.recover_stuck_instances(statuses=("scheduled", "running"))
    assert [i.name for i in recovered] == ["t_slow#0"]
    Path(manager.storage.path).with_name("release.jsonl").touch()
    rescuer = start_worker(worker.broker, (crash_queue,), "crash2", logs)
    try:
        instances = wait_for_session(manager, timeout=WAIT)
    finally:
        rescuer.stop()
        _delete_queues(worker.broker, (crash_queue,))
    assert instances["t_slow#0"].status == "finished", _describe(instances)
    runs = app_module.read_probe(manager.storage.path)
    # It ran once in each worker: the redelivered original message (AMQP
    # requeues unacked messages of a dead connection), if any, found it running
    # or finished and did nothing.
    assert [r["pid"] for r in runs] == [doomed.process.pid, rescuer.process.pid]
    assert instances["t_slow#0"].metadata["result"] == {
        "pid": rescuer.process.pid,
        "released": True,
    }
