"""The Celery app the integration tests' workers run (``celery -A <this module> worker``).

Imported by the test process too (to publish). The broker and queue names come
from the environment in workers (``TRIGGERS_TEST_CELERY_BROKER``,
``TRIGGERS_TEST_CELERY_QUEUE``) and from :func:`configure` / :func:`use_broker`
in the test process.

Every task appends a JSON line to ``probe.jsonl`` beside the session's SQLite
file when ``_run`` starts (instance, pid, worker hostname, time.time()), so
tests can see what ran where and when.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import celery
from celery import Celery

from triggers.celery_support import FunctionTriggerTask, trigger_task
from triggers.manager import TriggerManager, trigger_managers
from triggers.task import TaskContext, TriggerTask
from triggers.types import TaskInstance

DEFAULT_BROKER = "redis://127.0.0.1:6379/14"
DEFAULT_QUEUE = "triggers-test"

app = Celery("triggers_test")


def special_queue(queue: str) -> str:
    """The second queue (consumed by the routing test's second worker)."""
    return f"{queue}.special"


def configure(broker: str, queue: str) -> None:
    """Point the app at ``broker`` with ``queue`` as default queue (before first use)."""
    app.conf.update(
        broker_url=broker,
        task_default_queue=queue,
        task_routes={"triggers_test.routed": {"queue": special_queue(queue)}},
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )


def use_broker(broker: str) -> None:
    """Switch the test process's publisher to another broker (drops pooled connections)."""
    if app.conf.broker_url == broker:
        return
    if app._pool is not None:
        app._pool.force_close_all()
    app.conf.broker_url = broker
    app._pool = None
    app.amqp._producer_pool = None


configure(
    os.environ.get("TRIGGERS_TEST_CELERY_BROKER", DEFAULT_BROKER),
    os.environ.get("TRIGGERS_TEST_CELERY_QUEUE", DEFAULT_QUEUE),
)


# --- recording ------------------------------------------------------------------
def probe_path(context_or_manager: TaskContext | TriggerManager, name: str = "probe") -> Path:
    manager = getattr(context_or_manager, "manager", context_or_manager)
    return Path(manager.storage.path).with_name(f"{name}.jsonl")


def record(context: TaskContext, name: str = "probe", **extra: Any) -> dict[str, Any]:
    """Append what is running, where and when to the session's probe file."""
    request = celery.current_task.request if celery.current_task else None
    entry = {
        "instance": context.task_instance.name,
        "pid": os.getpid(),
        "hostname": getattr(request, "hostname", None),
        "started": time.time(),
        **extra,
    }
    with open(probe_path(context, name), "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
    return entry


def read_probe(storage_path: str | Path, name: str = "probe") -> list[dict[str, Any]]:
    path = Path(storage_path).with_name(f"{name}.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- tasks ------------------------------------------------------------------------
class RecordTask(TriggerTask):
    """Class-based, registered with app.register_task(): named ``<module>.RecordTask``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        entry = record(context)
        return {"kwargs": context.trigger_kwargs, "hostname": entry["hostname"]}


app.register_task(RecordTask())


@trigger_task(app, name="triggers_test.record_fn")
def record_fn(context: TaskContext) -> dict[str, Any]:
    """Decorator form: a plain function taking the context."""
    entry = record(context)
    return {"kwargs": context.trigger_kwargs, "hostname": entry["hostname"]}


@app.task(base=FunctionTriggerTask, name="triggers_test.decorated", bind=True)
def decorated(self: TriggerTask, context: TaskContext) -> dict[str, Any]:
    """Celery's own decorator with the function base, bound."""
    entry = record(context)
    return {"task": self.name, "hostname": entry["hostname"]}


@trigger_task(app, name="triggers_test.routed")
def routed(context: TaskContext) -> dict[str, Any]:
    """Routed to the special queue by the app's task_routes."""
    entry = record(context)
    return {"hostname": entry["hostname"]}


@trigger_task(app, name="triggers_test.fragile")
def fragile(context: TaskContext) -> dict[str, Any]:
    """Fails unless some trigger's kwargs say ``fixed``."""
    record(context)
    if not any(
        isinstance(v, Mapping) and v.get("fixed") for v in context.trigger_kwargs.values()
    ):
        raise RuntimeError(f"{context.task_instance.name}: not fixed yet")
    return {"kwargs": context.trigger_kwargs}


class RetryOnceTask(TriggerTask):
    """Retries its first instance with ``trigger_kwargs['retry']['cooldown']``."""

    name = "triggers_test.retry_once"

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        record(context)
        if context.task_instance.depth == 0:
            raise self.retry(cooldown=context.trigger_kwargs["retry"]["cooldown"])
        return {"depth": context.task_instance.depth}


app.register_task(RetryOnceTask())


@trigger_managers.register("triggers-test-marker")
class MarkerManager(TriggerManager):
    """Records every _post_fire (pid, hostname, trigger) in ``hooks.jsonl``."""

    def _post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        request = celery.current_task.request if celery.current_task else None
        entry = {
            "trigger": trigger_name,
            "scheduled": [i.name for i in tasks_scheduled],
            "pid": os.getpid(),
            "hostname": getattr(request, "hostname", None),
        }
        with open(probe_path(self, "hooks"), "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


@app.task(name="triggers_test.plain")
def plain(*args: Any, **kwargs: Any) -> None:
    """A plain Celery task (not a TriggerTask): ``run`` must not name it."""


@trigger_task(app, name="triggers_test.sleepy")
def sleepy(context: TaskContext) -> dict[str, Any]:
    """Waits (at most 30 s) until ``release`` exists beside the session's database."""
    entry = record(context)
    release = probe_path(context, "release")
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"pid": entry["pid"], "released": release.exists()}
