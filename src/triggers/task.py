"""Trigger tasks: Celery tasks whose ``_run(context)`` runs a task instance.

The framework wraps ``_run`` in the status protocol (SPEC section 6): the
instance becomes ``running`` (with ``actualKwargs``), then ``finished`` (with
``result``, cascading the task's name with the result as kwargs), ``skipped``,
``replayed`` (retry) or ``failed`` (with the exception's type, traceback and
context; the exception propagates).
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import celery

from triggers.engine import merge_kwargs
from triggers.exceptions import TaskNotFoundError, with_context
from triggers.logging import ContextLogger, LevelTracker, logger_context
from triggers.types import STATUS_SKIPPED, TaskInstance

if TYPE_CHECKING:
    from triggers.manager import TriggerManager

__all__ = [
    "TriggerTask",
    "TaskContext",
    "StatusChange",
    "Retry",
    "MaxRetriesExceeded",
    "resolve_task",
]

log = logging.getLogger(__name__)


class StatusChange(Exception):
    """Raised by a task to end its instance with another status (see ``skip``)."""

    quiet = True

    def __init__(self, status: str, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.metadata = dict(metadata or {})


class Retry(StatusChange):
    """Raised (via ``raise self.retry(...)``) to replay the instance after ``cooldown``."""

    def __init__(
        self,
        exc: BaseException | None = None,
        metadata: Mapping[str, Any] | None = None,
        replacement_kwargs: Mapping[str, Any] | None = None,
        cooldown: float | None = None,
    ) -> None:
        super().__init__("replayed", metadata)
        self.exc = exc
        self.replacement_kwargs = None if replacement_kwargs is None else dict(replacement_kwargs)
        self.cooldown = cooldown


class MaxRetriesExceeded(Exception):
    """A task asked to retry once its instance's depth reached ``max_retries``."""


class TaskContext:
    """What ``_run`` gets: the manager, the trigger kwargs and the instance."""

    def __init__(
        self,
        manager: TriggerManager,
        task_instance: TaskInstance,
        trigger_kwargs: dict[str, Any],
        task: TriggerTask | None = None,
    ) -> None:
        self.manager = manager
        self.task_instance = task_instance
        self.trigger_kwargs = trigger_kwargs
        self.task = task
        self.log_tracker = LevelTracker()

    @property
    def log_level(self) -> int:
        return self.log_tracker.max_level

    @property
    def logger(self) -> logging.Logger:
        task_name = self.task.name if self.task is not None and self.task.name else "task"
        return logging.getLogger(f"triggers.task.{task_name}")

    def base_log_context(self) -> dict[str, Any]:
        return {
            "session": self.manager.storage.uid,
            "instance": self.task_instance.name,
            "task": self.task_instance.config.name,
        }

    def get_logger(self, context: Mapping[str, Any] | None = None) -> ContextLogger:
        merged = self.base_log_context()
        merged.update(context or {})
        return ContextLogger(self.logger, merged, self.log_tracker)

    @contextmanager
    def get_logger_context(
        self, context: Mapping[str, Any] | None = None
    ) -> Iterator[ContextLogger]:
        """A logger carrying ``context`` (plus session/instance); logs exceptions raised inside."""
        merged = self.base_log_context()
        merged.update(context or {})
        with logger_context(self.logger, merged, self.log_tracker) as logger:
            yield logger

    def filter_kwargs(self, filters: Any) -> dict[str, Any]:
        """Validate and convert the trigger kwargs.

        ``filters`` is either a pydantic model class (validating the whole
        ``trigger_kwargs`` mapping), a Filters-library filter, or a mapping of
        trigger name -> filter / pydantic model. Returns the cleaned kwargs;
        raises ``ValueError`` listing every invalid value.
        """
        return filter_kwargs(self.trigger_kwargs, filters)


def _is_pydantic_model(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_validate")


def filter_kwargs(kwargs: Mapping[str, Any], filters: Any) -> dict[str, Any]:
    """Validate and convert ``kwargs`` (see :meth:`TaskContext.filter_kwargs`).

    Raises a plain ``ValueError`` whose message lists every problem as
    ``<trigger>.<key>: <message>``; its ``context`` (see ``with_context``) holds
    the problems as data under ``filter_errors``.
    """
    if _is_pydantic_model(filters):
        try:
            return _validate_pydantic(filters, kwargs, None)
        except _InvalidKwargs as exc:
            raise exc.as_value_error() from None
    if isinstance(filters, Mapping) and all(_is_pydantic_model(v) for v in filters.values()):
        problems: list[str] = []
        cleaned: dict[str, Any] = {}
        for trigger, model in filters.items():
            try:
                cleaned[trigger] = _validate_pydantic(model, kwargs.get(trigger, {}), trigger)
            except _InvalidKwargs as exc:
                problems += exc.problems
        if problems:
            raise _InvalidKwargs(problems).as_value_error()
        return cleaned
    try:
        import filters as f
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise TypeError(
            "filter_kwargs() got neither a pydantic model nor a mapping of them; the Filters "
            "library form needs the 'filters' extra (pip install triggers[filters])"
        ) from exc
    data = dict(kwargs)
    if isinstance(filters, Mapping):
        # The original form: {trigger: {key: filter}}. A trigger named there but
        # absent from the kwargs is checked as {} so its required keys are reported.
        for trigger, spec in filters.items():
            if isinstance(spec, Mapping) and data.get(trigger) is None:
                data[trigger] = {}
    runner = f.FilterRunner(_filters_form(filters), data)
    if not runner.is_valid():
        problems = []
        for key, messages in sorted(runner.errors.items()):
            for message in messages:
                problems.append(f"{key or '(root)'}: {message['message']} ({message['code']})")
        raise with_context(
            ValueError("invalid trigger kwargs: " + "; ".join(problems)),
            {"filter_errors": {k: list(v) for k, v in runner.errors.items()}},
        )
    return dict(runner.cleaned_data)


def _filters_form(spec: Any) -> Any:
    """Nested mappings of the Filters form become FilterMappers (extra and missing
    keys allowed: add ``f.Required`` to insist on a key)."""
    import filters as f

    if isinstance(spec, Mapping):
        return f.FilterMapper(
            {key: _filters_form(value) for key, value in spec.items()},
            allow_missing_keys=True,
            allow_extra_keys=True,
        )
    return spec


class _InvalidKwargs(Exception):
    """Internal: the problems found by one pydantic validation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems

    def as_value_error(self) -> ValueError:
        return with_context(
            ValueError("invalid trigger kwargs: " + "; ".join(self.problems)),
            {"filter_errors": list(self.problems)},
        )


def _validate_pydantic(model: Any, data: Any, trigger: str | None) -> dict[str, Any]:
    import pydantic

    try:
        obj = model.model_validate(data)
    except pydantic.ValidationError as exc:
        where = f"{trigger}." if trigger else ""
        problems = [
            f"{where}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        raise _InvalidKwargs(problems) from None
    return obj.model_dump()


class TriggerTask(celery.Task):
    """Base class of trigger tasks: override ``_run(context)``, not ``run``."""

    abstract = True
    #: Retries allowed through ``self.retry()`` (Celery's attribute; None: unlimited).
    max_retries = 3
    #: Trigger tasks always use JSON messages.
    serializer = "json"

    def __init__(self) -> None:
        super().__init__()
        self._trigger_local = threading.local()

    # --- entry points -------------------------------------------------------
    def run(self, *args: Any, **message: Any) -> Any:
        """Celery entry point: ``message`` is built by the runner (see build_message)."""
        return self.execute(message)

    #: The function a Celery decorator built this task from (see the class docs).
    _trigger_function: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        namespace = cls.__dict__
        if not namespace.get("_decorated") or "run" not in namespace:
            return
        # Celery built this class from a function and made it ``run`` (a staticmethod
        # unless bind=True). Keep it as the body of _run; put the entry point back.
        cls._trigger_function = namespace["run"]
        cls.run = TriggerTask.run  # type: ignore[method-assign]
        # Celery checks apply_async arguments against the function's signature;
        # messages are the framework's, not the function's arguments.
        if "__header__" in namespace:
            delattr(cls, "__header__")

    def _run(self, context: TaskContext) -> Mapping[str, Any] | None:
        function = self._trigger_function
        if function is None:
            raise NotImplementedError(
                f"{type(self).__qualname__} must implement _run(context)"
            )
        return function(context)

    def execute(
        self, message: Mapping[str, Any], manager_class: type[TriggerManager] | None = None
    ) -> dict[str, Any] | None:
        """Run the instance named in ``message`` under the status protocol."""
        from triggers.manager import rebuild_manager

        manager = rebuild_manager(message, manager_class)
        return manager._execute_instance(self, message["instance"])

    # --- helpers for _run ---------------------------------------------------
    @property
    def context(self) -> TaskContext:
        ctx = getattr(self._local_state(), "context", None)
        if ctx is None:
            raise RuntimeError(f"{self.name}: no task instance is running in this thread")
        return ctx

    def _local_state(self) -> threading.local:
        state = self.__dict__.get("_trigger_local")
        if state is None:
            state = self.__dict__.setdefault("_trigger_local", threading.local())
        return state

    @contextmanager
    def _running(self, context: TaskContext) -> Iterator[None]:
        state = self._local_state()
        previous = getattr(state, "context", None)
        state.context = context
        try:
            yield
        finally:
            state.context = previous

    def skip(self, metadata: Mapping[str, Any] | None = None) -> StatusChange:
        """``raise self.skip(metadata)`` ends the instance as ``skipped``."""
        return StatusChange(STATUS_SKIPPED, metadata)

    def retry(
        self,
        exc: BaseException | None = None,
        metadata: Mapping[str, Any] | None = None,
        replacement_kwargs: Mapping[str, Any] | None = None,
        cooldown: float | None = None,
    ) -> Retry:
        """``raise self.retry(...)``: replay the instance after ``cooldown`` seconds.

        Raises :class:`MaxRetriesExceeded` instead once the instance's depth has
        reached ``max_retries``.
        """
        instance = self.context.task_instance
        if self.max_retries is not None and instance.depth >= self.max_retries:
            raise MaxRetriesExceeded(
                f"{instance.name}: retried {instance.depth} time(s), "
                f"max_retries is {self.max_retries}"
            ) from exc
        if cooldown is not None and (not isinstance(cooldown, (int, float)) or cooldown < 0):
            raise ValueError(f"cooldown must be a non-negative number of seconds, got {cooldown!r}")
        return Retry(exc, metadata, replacement_kwargs, cooldown)


def exception_metadata(exc: BaseException) -> dict[str, Any]:
    """The failure metadata of an exception: type, traceback and context."""
    exc_type = type(exc)
    context = getattr(exc, "context", None)
    return {
        "exceptionType": f"{exc_type.__module__}.{exc_type.__qualname__}",
        "exceptionInfo": "".join(traceback.format_exception(exc_type, exc, exc.__traceback__)),
        "exceptionContext": json.loads(json.dumps(context, default=repr)) if context else {},
    }


def trigger_kwargs_for(instance: TaskInstance) -> dict[str, Any]:
    """``withParams`` merged (recursively) under the instance's kwargs."""
    return merge_kwargs(instance.config.with_params, instance.kwargs)


# --- finding the task a ``run`` directive names ----------------------------------
_by_path: dict[str, TriggerTask] = {}
_by_path_lock = threading.Lock()


def resolve_task(run: str, task_name: str | None = None) -> TriggerTask:
    """The :class:`TriggerTask` a ``run`` directive names.

    Looks in the task registries of the Celery apps of this process first, then
    imports ``run`` as a Python path (``package.module.ClassName``) naming a
    TriggerTask subclass or instance. Raises :class:`TaskNotFoundError`.
    """
    from celery import _state

    where = f"task {task_name!r}: " if task_name else ""
    for app in list(_state._get_active_apps()):
        try:
            found = app.tasks.get(run)
        except RuntimeError:  # an app that must not be finalized yet
            found = app._tasks.get(run)
        if found is not None:
            if not isinstance(found, TriggerTask):
                raise TaskNotFoundError(
                    f"{where}run={run!r} names a Celery task that does not extend TriggerTask"
                )
            return found
    with _by_path_lock:
        if run in _by_path:
            return _by_path[run]
        module_name, _, attr = run.rpartition(".")
        obj: Any = None
        if module_name:
            try:
                module = importlib.import_module(module_name)
                obj = getattr(module, attr, None)
            except ImportError:
                obj = None
        if isinstance(obj, type) and issubclass(obj, TriggerTask):
            obj = obj()
        if not isinstance(obj, TriggerTask):
            raise TaskNotFoundError(
                f"{where}run={run!r} names no registered TriggerTask; expected the name of a "
                "task registered on a Celery app or the Python path of a TriggerTask class"
            )
        if not obj.name:
            obj.name = run
        _by_path[run] = obj
        return obj
