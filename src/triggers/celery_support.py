"""Celery conveniences: trigger tasks from plain functions, and waiting for a session.

``@trigger_task(app)`` turns a function taking a :class:`~triggers.task.TaskContext`
into a :class:`~triggers.task.TriggerTask` registered on ``app`` (or, with no
app, a shared task registered on every app, like ``@shared_task``)::

    @trigger_task(app)
    def import_subject(context):
        return {"subjectId": 42}

The same is available through Celery's own decorator with
``@app.task(base=FunctionTriggerTask)``.

:func:`wait_for_session` is for integration tests that run real workers: it
waits, with a bound, until no instance of a session is ``scheduled`` or
``running``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import celery

from triggers.manager import TriggerManager
from triggers.storages.base import BaseTriggerStorage
from triggers.task import TriggerTask
from triggers.types import STATUS_RUNNING, STATUS_SCHEDULED, TaskInstance

__all__ = ["FunctionTriggerTask", "trigger_task", "wait_for_session", "PENDING_STATUSES"]

#: Statuses :func:`wait_for_session` waits to leave.
PENDING_STATUSES = frozenset({STATUS_SCHEDULED, STATUS_RUNNING})

TaskFunction = Callable[..., Mapping[str, Any] | None]
F = TypeVar("F", bound=TaskFunction)


class FunctionTriggerTask(TriggerTask):
    """Base for trigger tasks made from a function by Celery's decorator.

    ``@app.task(base=FunctionTriggerTask)`` behaves as ``@app.task(base=TriggerTask)``
    (see :class:`~triggers.task.TriggerTask`): the function becomes ``_run`` and
    is called as ``function(context)`` (``function(self, context)`` with
    ``bind=True``) under the trigger task protocol.
    """


@overload
def trigger_task(app: F) -> TriggerTask: ...


@overload
def trigger_task(
    app: celery.Celery | None = None, name: str | None = None, **options: Any
) -> Callable[[TaskFunction], TriggerTask]: ...


def trigger_task(app: Any = None, name: str | None = None, **options: Any) -> Any:
    """Decorator: a function ``f(context) -> dict | None`` as a registered trigger task.

    ``@trigger_task(app)`` registers it on ``app`` (Celery's ``app.task``, so
    autodiscovery and lazy registration behave as usual); ``@trigger_task()``
    or a bare ``@trigger_task`` makes a shared task (``celery.shared_task``)
    available on every app. ``name`` is the registered task name, i.e. what a
    configuration's ``run`` directive says; without it Celery's usual name,
    ``module.function``. Other keyword arguments are Celery task options
    (``bind=True`` passes the task as first argument, ``acks_late``,
    ``max_retries`` for ``self.retry()``...). The decorated name is bound to the
    task object; calling it directly is not supported (fire triggers instead).
    """
    if "base" in options and not (
        isinstance(options["base"], type) and issubclass(options["base"], TriggerTask)
    ):
        raise TypeError(
            f"trigger_task(base={options['base']!r}): base must be TriggerTask "
            "or a subclass of it"
        )
    if "serializer" in options and options["serializer"] != "json":
        raise ValueError(
            f"trigger_task(serializer={options['serializer']!r}): trigger task messages "
            "are always JSON"
        )
    options.setdefault("base", FunctionTriggerTask)
    if name is not None:
        options["name"] = name
    if callable(app) and not isinstance(app, celery.Celery):
        # Bare decorator: @trigger_task
        return celery.shared_task(**options)(app)
    if app is None:
        return celery.shared_task(**options)
    if not isinstance(app, celery.Celery):
        raise TypeError(f"trigger_task(app): expected a Celery app or None, got {app!r}")
    return app.task(**options)


def _storage_of(storage_or_manager: BaseTriggerStorage | TriggerManager) -> BaseTriggerStorage:
    if isinstance(storage_or_manager, TriggerManager):
        return storage_or_manager.storage
    if isinstance(storage_or_manager, BaseTriggerStorage):
        return storage_or_manager
    raise TypeError(
        "wait_for_session() expected a trigger storage or a TriggerManager, "
        f"got {storage_or_manager!r}"
    )


def wait_for_session(
    storage_or_manager: BaseTriggerStorage | TriggerManager,
    timeout: float = 30.0,
    poll: float = 0.05,
) -> dict[str, TaskInstance]:
    """Wait until no instance of the session is ``scheduled`` or ``running``.

    Polls the storage every ``poll`` seconds (re-reading it each time) for at
    most ``timeout`` seconds. Returns the session's instances (name ->
    instance) as last read, every one of them neither scheduled nor running.
    Raises ``TimeoutError`` listing the instances still pending (name and
    status) when the bound is reached. A task whose ``cooldown`` has not
    elapsed yet counts as pending (it is ``scheduled``).

    Meant for integration tests against real workers: a worker that is not
    running, or does not consume the task's queue, shows as a timeout naming
    the instances it never started.
    """
    storage = _storage_of(storage_or_manager)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    if isinstance(poll, bool) or not isinstance(poll, (int, float)) or poll <= 0:
        raise ValueError(f"poll must be a positive number of seconds, got {poll!r}")
    deadline = time.monotonic() + timeout
    while True:
        storage.invalidate_cache()
        instances = storage.instances
        pending = {n: i.status for n, i in instances.items() if i.status in PENDING_STATUSES}
        if not pending:
            return instances
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            listed = ", ".join(f"{n} ({s})" for n, s in pending.items())
            raise TimeoutError(
                f"session {storage.uid!r}: {len(pending)} task instance(s) still pending "
                f"after {timeout}s: {listed}"
            )
        time.sleep(min(poll, remaining))
