"""Send trigger tasks to Celery workers through the broker.

Routing directives
------------------
Besides Celery's own routing (``task_routes``, ``task_default_queue``,
``task_default_priority``, ... in the app configuration, which apply to trigger
tasks exactly as to any task), a trigger task's configuration may carry these
extra directives, passed to ``apply_async`` for that trigger task only:

``queue``
    name of the queue to publish to (a non-empty string);
``priority``
    message priority, an integer from 0 to 255 (what it means depends on the
    broker: RabbitMQ needs ``x-max-priority`` on the queue, Redis emulates a few
    levels);
``celeryOptions``
    a dict of other ``apply_async`` routing options: ``queue``, ``routing_key``,
    ``exchange``, ``priority``, ``expires`` (seconds), ``time_limit``,
    ``soft_time_limit``. ``queue`` / ``priority`` given at the top level win.

They are checked when an instance is about to be scheduled: a bad value raises
:class:`InvalidCeleryOptions` (a :class:`~triggers.exceptions.DispatchError` and
a :class:`~triggers.exceptions.ConfigurationError` naming the task and the
directive) and the step that would have scheduled it changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from triggers.exceptions import ConfigurationError, DispatchError, TaskNotFoundError
from triggers.runners.base import BaseTaskRunner, build_message

if TYPE_CHECKING:
    import celery

    from triggers.manager import TriggerManager
    from triggers.task import TriggerTask
    from triggers.types import TaskConfig, TaskInstance

__all__ = ["CeleryTaskRunner", "InvalidCeleryOptions", "celery_options", "ROUTING_OPTIONS"]

#: ``apply_async`` options a configuration may set through ``celeryOptions``.
ROUTING_OPTIONS = frozenset(
    {"queue", "routing_key", "exchange", "priority", "expires", "time_limit", "soft_time_limit"}
)

_JSON_CONTENT_TYPES = frozenset({"json", "application/json"})


class InvalidCeleryOptions(DispatchError, ConfigurationError):
    """A trigger task's ``queue`` / ``priority`` / ``celeryOptions`` directive is invalid."""


def _number(task: str, directive: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidCeleryOptions(
            task, directive, f"{key} must be a non-negative number of seconds, got {value!r}"
        )
    return value


def _priority(task: str, directive: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidCeleryOptions(
            task, directive, f"priority must be an integer from 0 to 255, got {value!r}"
        )
    return value


def _name(task: str, directive: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidCeleryOptions(
            task, directive, f"{key} must be a non-empty string, got {value!r}"
        )
    return value


def celery_options(config: TaskConfig) -> dict[str, Any]:
    """The ``apply_async`` routing options a trigger task's configuration asks for.

    Reads the ``queue``, ``priority`` and ``celeryOptions`` directives (see the
    module documentation). Returns ``{}`` when there are none, so Celery's own
    routing applies. Raises :class:`InvalidCeleryOptions` naming the task and
    directive when a value is not what is expected.
    """
    extras = config.extras
    task = config.name
    options: dict[str, Any] = {}
    raw = extras.get("celeryOptions")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise InvalidCeleryOptions(
                task, "celeryOptions", f"expected a dict of apply_async options, got {raw!r}"
            )
        unknown = sorted(set(raw) - ROUTING_OPTIONS)
        if unknown:
            raise InvalidCeleryOptions(
                task,
                "celeryOptions",
                f"unsupported option(s) {unknown}; expected some of {sorted(ROUTING_OPTIONS)} "
                "(serializer, countdown and the message itself are set by the framework)",
            )
        for key, value in raw.items():
            if key == "priority":
                options[key] = _priority(task, "celeryOptions", value)
            elif key in ("expires", "time_limit", "soft_time_limit"):
                options[key] = _number(task, "celeryOptions", key, value)
            else:
                options[key] = _name(task, "celeryOptions", key, value)
    if "queue" in extras:
        options["queue"] = _name(task, "queue", "queue", extras["queue"])
    if "priority" in extras:
        options["priority"] = _priority(task, "priority", extras["priority"])
    return options


def _refuse_eager(task: TriggerTask, name: str) -> None:
    if task.app.conf.task_always_eager:
        raise DispatchError(
            f"task {name!r}: Celery's task_always_eager is on; the Celery runner refuses "
            "eager mode, in which Celery would run the task, and every cascade after it, "
            "synchronously inside fire() and ignore cooldowns (countdown). Use the "
            "'threading' runner (e.g. triggers.testing.threading_runner()) to run trigger "
            "tasks in this process."
        )


def _registered_trigger_tasks(run: str) -> list[TriggerTask]:
    """The TriggerTasks registered under ``run`` on the Celery apps of this process."""
    from celery import _state

    from triggers.task import TriggerTask

    found = []
    for app in list(_state._get_active_apps()):
        try:
            task = app.tasks.get(run)
        except RuntimeError:  # an app that must not be finalized yet
            task = app._tasks.get(run)
        if isinstance(task, TriggerTask):
            found.append(task)
    return found


def _choose(config: TaskConfig, candidates: list[TriggerTask]) -> TriggerTask:
    """One of several apps' copies of a task: current app, default app, else one broker."""
    from celery import _state

    preferred = [getattr(_state._tls, "current_app", None), _state.default_app]
    for app in preferred:
        if app is None or (app is _state.default_app and app.main == "default"):
            continue  # Celery's automatic fallback app is never a deliberate choice
        for task in candidates:
            if task.app is app:
                return task
    named = [t for t in candidates if t.app.main != "default"] or candidates
    brokers = {str(t.app.conf.broker_url) for t in named}
    if len(brokers) > 1:
        from kombu.utils.url import maybe_sanitize_url  # no passwords in messages

        apps = ", ".join(
            sorted(f"{t.app.main!r} ({maybe_sanitize_url(t.app.conf.broker_url)})" for t in named)
        )
        raise DispatchError(
            f"task {config.name!r}: run={config.run!r} is registered on several Celery apps "
            f"with different brokers: {apps}; make one current or default "
            "(app.set_default()) or set CeleryTaskRunner.celery_app"
        )
    return min(named, key=lambda t: str(t.app.main))


class CeleryTaskRunner(BaseTaskRunner):
    """Publishes each scheduled instance as a Celery task message (JSON only).

    The message carries registry keys, the session uid and the storage's
    non-secret options, so a worker rebuilds the same manager and storage.
    ``cooldown`` becomes the countdown; routing (queues, routes, priorities)
    is Celery's, as for any task, plus the per-task directives described in the
    module documentation.

    Guarantees, checked before the step that schedules an instance commits
    (so a refused instance is never left ``scheduled``):

    - ``run`` names a :class:`~triggers.task.TriggerTask` registered on a Celery
      app (:class:`~triggers.exceptions.TaskNotFoundError` naming it otherwise);
    - the app is not in eager mode and accepts JSON
      (:class:`~triggers.exceptions.DispatchError` saying why otherwise);
    - the manager class is registered in ``trigger_managers``, so workers can
      rebuild it;
    - the routing directives are valid (:class:`InvalidCeleryOptions`).
    """

    #: The Celery app to publish with. None: the app that registered the task.
    #: When several apps of this process have a TriggerTask under the ``run``
    #: name (Celery copies ``@app.task`` tasks to every app), the thread's
    #: current app, else the default app (``app.set_default()``), else any of
    #: them if they all use the same broker; otherwise dispatch is refused.
    celery_app: ClassVar[celery.Celery | None] = None

    def resolve(self, task_instance: TaskInstance) -> TriggerTask:
        """The registered TriggerTask to publish ``task_instance`` with.

        Raises :class:`TaskNotFoundError` naming ``run`` when no Celery app of
        this process registered a TriggerTask under that name, and
        :class:`DispatchError` when several apps with different brokers did
        and none of them is pinned, current or default.
        """
        config = task_instance.config
        candidates = _registered_trigger_tasks(config.run)
        pinned = type(self).celery_app
        if pinned is not None:
            for task in candidates:
                if task.app is pinned:
                    return task
            where = f"{pinned.main!r} (CeleryTaskRunner.celery_app)"
            if pinned.tasks.get(config.run) is not None:
                raise TaskNotFoundError(
                    f"task {config.name!r}: run={config.run!r} names a Celery task of the app "
                    f"{where} that does not extend TriggerTask"
                )
        else:
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                return _choose(config, candidates)
            task = super().resolve(task_instance)  # a Python path, or TaskNotFoundError
            where = repr(task.app.main)
        raise TaskNotFoundError(
            f"task {config.name!r}: run={config.run!r} is not registered on the "
            f"Celery app {where}; workers could not run it "
            "(register it with app.register_task(), @app.task(base=FunctionTriggerTask) "
            "or @trigger_task(app) from triggers.celery_support)"
        )

    def check(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        task = self.resolve(task_instance)
        name = task_instance.config.name
        conf = task.app.conf
        _refuse_eager(task, name)
        accept = conf.accept_content
        if accept is not None and not _JSON_CONTENT_TYPES & {str(a) for a in accept}:
            raise DispatchError(
                f"task {name!r}: the Celery app {task.app.main!r} does not accept JSON "
                f"(accept_content={sorted(accept)!r}); trigger task messages are always JSON, "
                "add 'json' to accept_content"
            )
        celery_options(task_instance.config)
        from triggers.manager import trigger_managers

        if trigger_managers.key_of(type(manager)) is None:
            raise DispatchError(
                f"manager class {type(manager).__qualname__} is not registered in "
                "trigger_managers; register it so workers can rebuild it"
            )

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        """Publish ``task_instance`` (JSON) with its cooldown as countdown.

        Raises (and the manager marks the instance ``failed``) when the broker
        refuses the message.
        """
        # The manager ran check() before the step that scheduled this instance
        # committed; only eager mode is checked again (it may have been switched on).
        task = self.resolve(task_instance)
        _refuse_eager(task, task_instance.config.name)
        message = build_message(manager, task_instance)
        task.apply_async(
            kwargs=message,
            countdown=task_instance.cooldown or None,
            serializer="json",
            # What monitoring (events, `celery inspect`) shows instead of the
            # kwargs: trigger kwargs may hold personal data, and repr'ing them
            # costs more than the rest of the publish.
            kwargsrepr=f"{{session={message['uid']!r}, instance={message['instance']!r}}}",
            **celery_options(task_instance.config),
        )
