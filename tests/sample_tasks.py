"""Trigger tasks, managers and runners used by the behaviour tests.

The tests name these tasks by Python path (``'run': 'sample_tasks.RecordingTask'``);
``tests/`` is on ``sys.path`` while pytest runs, so the path resolves. Every task
here is deterministic and returns (or raises) what its trigger kwargs ask for.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import filters as f
import pydantic

from triggers.exceptions import with_context
from triggers.manager import TriggerManager
from triggers.runners.threading import ThreadingTaskRunner
from triggers.task import TaskContext, TriggerTask
from triggers.testing import name_matches_classpath
from triggers.types import TaskInstance

P = "sample_tasks."


def settle(manager: TriggerManager) -> None:
    """Wait for every task thread (cascades included), then drop the read cache."""
    ThreadingTaskRunner.join_all(timeout=30)
    manager.storage.invalidate_cache()


@name_matches_classpath
class RecordingTask(TriggerTask):
    """Returns what it saw: instance, status, trigger kwargs, manager and storage."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        instance = context.task_instance
        return {
            "instance": instance.name,
            "status": instance.status,
            "triggerKwargs": context.trigger_kwargs,
            "manager": type(context.manager).__qualname__,
            "storage": type(context.manager.storage).__qualname__,
            "uid": context.manager.storage.uid,
            "parent": instance.parent,
            "depth": instance.depth,
        }


@name_matches_classpath
class ListTask(TriggerTask):
    """Returns a list, which is not a valid result."""

    def _run(self, context: TaskContext) -> Any:
        return [1, 2, 3]


@name_matches_classpath
class NonJsonTask(TriggerTask):
    """Returns a mapping whose value cannot be stored as JSON."""

    def _run(self, context: TaskContext) -> Any:
        return {"when": object()}


@name_matches_classpath
class NoneTask(TriggerTask):
    """Returns None (counts as ``{}``)."""

    def _run(self, context: TaskContext) -> None:
        return None


class SampleError(Exception):
    """Raised by :class:`ContextFailingTask`."""


@name_matches_classpath
class ContextFailingTask(TriggerTask):
    """Raises :class:`SampleError` carrying a context (``with_context``)."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        raise with_context(SampleError("row 7 is broken"), {"row": 7, "sheet": "people"})


@name_matches_classpath
class FlakyTask(TriggerTask):
    """Fails with :class:`SampleError` unless some trigger's kwargs say ``ok: True``;
    otherwise returns ``{'kwargs': trigger_kwargs}``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        if not any(
            isinstance(v, Mapping) and v.get("ok") is True for v in context.trigger_kwargs.values()
        ):
            raise SampleError(f"{context.task_instance.name} is not ok")
        return {"kwargs": context.trigger_kwargs}


@name_matches_classpath
class LoggingTask(TriggerTask):
    """Logs through ``get_logger_context``; ``trigger_kwargs['log']`` says how.

    ``{'log': {'level': 'warning' | 'error' | 'info', 'raise': bool}}``.
    """

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        settings = {}
        for kwargs in context.trigger_kwargs.values():
            if isinstance(kwargs, Mapping) and "log" in kwargs:
                settings = kwargs["log"]
        level = settings.get("level", "info")
        with context.get_logger_context({"step": "import"}) as logger:
            logger.info("starting")
            if level in ("warning", "error"):
                logger.warning("row %d looks odd", 3, extra={"context": {"row": 3}})
            if level == "error":
                logger.error("row %d is broken", 4, extra={"context": {"row": 4}})
            if settings.get("raise"):
                raise SampleError("giving up")
        return {"level": level}


@name_matches_classpath
class SkipWithMetadataTask(TriggerTask):
    """Skips itself with the metadata found in ``trigger_kwargs``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        raise self.skip({"why": "not needed", "seen": sorted(context.trigger_kwargs)})


@name_matches_classpath
class RetryOnceTask(TriggerTask):
    """At depth 0 retries with the options in ``trigger_kwargs['go']['retry']``;
    afterwards returns its depth, parent and trigger kwargs."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        instance = context.task_instance
        if instance.depth == 0:
            options = dict(context.trigger_kwargs.get("go", {}).get("retry", {}))
            exc = SampleError(options.pop("error")) if "error" in options else None
            raise self.retry(exc=exc, **options)
        return {
            "depth": instance.depth,
            "parent": instance.parent,
            "triggerKwargs": context.trigger_kwargs,
        }


@name_matches_classpath
class AlwaysRetryTask(TriggerTask):
    """Retries every time; ``max_retries`` is 2."""

    max_retries = 2

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        raise self.retry()


ORDER_FILTERS = {"order": {"id": f.Required | f.Int, "qty": f.Optional(1) | f.Int}}


@name_matches_classpath
class FiltersTask(TriggerTask):
    """Cleans ``order`` kwargs with the Filters library (the original form)."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        return {"cleaned": context.filter_kwargs(ORDER_FILTERS)["order"]}


class Order(pydantic.BaseModel):
    id: int
    qty: int = 1


class OrderKwargs(pydantic.BaseModel):
    order: Order


@name_matches_classpath
class PydanticTask(TriggerTask):
    """Cleans ``order`` kwargs with a pydantic model (per trigger and whole)."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        per_trigger = context.filter_kwargs({"order": Order})
        whole = context.filter_kwargs(OrderKwargs)
        return {"perTrigger": per_trigger, "whole": whole}


@name_matches_classpath
class FiringTask(TriggerTask):
    """Fires ``trigger_kwargs['go']['fire']`` through ``context.manager``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        target = context.trigger_kwargs["go"]["fire"]
        scheduled = context.manager.fire(target, {"from": context.task_instance.name})
        return {
            "fired": target,
            "scheduled": [i.name for i in scheduled],
            "manager": type(context.manager).__qualname__,
        }


# --- a task that blocks until the test releases it ------------------------------
class Gate:
    """Lets a test hold a task in ``running`` (no sleeps: events with timeouts)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


GATES: dict[str, Gate] = {}


def new_gate(key: str) -> Gate:
    GATES[key] = gate = Gate()
    return gate


@name_matches_classpath
class BlockingTask(TriggerTask):
    """Signals ``GATES[key].started`` and waits for ``release`` (10 s at most)."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        key = context.trigger_kwargs["go"]["gate"]
        gate = GATES[key]
        gate.started.set()
        if not gate.release.wait(10):
            raise TimeoutError(f"gate {key!r} was never released")
        return {"gate": key}


# --- a custom manager, its runner and hook recording ---------------------------------
class PirateRunner(ThreadingTaskRunner):
    """A threading runner that remembers what it ran."""

    ran: ClassVar[list[str]] = []

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        type(self).ran.append(task_instance.name)
        super().run(manager, task_instance)


class PirateTriggerManager(TriggerManager):
    """Uses its own runner by default and records every hook call."""

    default_task_runner_name = "pirate-threads"
    calls: ClassVar[list[tuple[Any, ...]]] = []

    def _post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        type(self).calls.append(("fire", trigger_name, [i.name for i in tasks_scheduled]))


class HookRecordingManager(TriggerManager):
    """Records hook calls with what the storage holds when each hook runs."""

    calls: ClassVar[list[tuple[Any, ...]]] = []

    def _post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        type(self).calls.append(
            ("fire", trigger_name, [(i.name, i.status) for i in tasks_scheduled])
        )

    def _post_replay(self, task_instance: TaskInstance) -> None:
        self.storage.invalidate_cache()
        clones = [i.name for i in self.storage if i.parent == task_instance.name]
        type(self).calls.append(("replay", task_instance.name, task_instance.status, clones))

    def _post_skip(self, task_instance: TaskInstance, cascade: bool) -> None:
        self.storage.invalidate_cache()
        names = sorted(self.storage.instances)
        type(self).calls.append(("skip", task_instance.name, task_instance.status, cascade, names))


@name_matches_classpath
class BadStatusChangeTask(TriggerTask):
    """Skips or retries with data that cannot be stored as JSON
    (``trigger_kwargs['go']['how']``: ``skip``, ``retry-kwargs``, ``retry-metadata``)."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        how = context.trigger_kwargs["go"]["how"]
        if how == "skip":
            raise self.skip({"when": object()})
        if how == "retry-kwargs":
            raise self.retry(replacement_kwargs={"go": {"when": object()}})
        if how == "retry-metadata":
            raise self.retry(metadata={"when": object()})
        raise self.retry(cooldown=-1)
