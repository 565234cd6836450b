"""One error hierarchy for the library, and :func:`with_context`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "TriggersError",
    "ConfigurationError",
    "InvalidTriggerKwargs",
    "StorageError",
    "StorageUnavailableError",
    "StorageConflictError",
    "DispatchError",
    "TaskNotFoundError",
    "RunnerNotFoundError",
    "with_context",
]

E = TypeVar("E", bound=BaseException)


def with_context(exc: E, context: Mapping[str, Any]) -> E:
    """Attach ``context`` to ``exc`` (merged into any context it already has).

    The context ends up in ``exc.context`` and is stored in a failed instance's
    ``exceptionContext`` metadata. Returns the same exception, so it can be used
    as ``raise with_context(ValueError(...), {...})``.
    """
    existing = getattr(exc, "context", None)
    merged: dict[str, Any] = dict(existing) if isinstance(existing, Mapping) else {}
    merged.update(context)
    try:
        exc.context = merged  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exotic exception types with __slots__
        pass
    return exc


class TriggersError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(TriggersError, ValueError):
    """A configuration is invalid; names the task and the directive."""

    def __init__(self, task: str | None, directive: str | None, message: str) -> None:
        self.task = task
        self.directive = directive
        where = []
        if task is not None:
            where.append(f"task {task!r}")
        if directive is not None:
            where.append(f"directive {directive!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class InvalidTriggerKwargs(TriggersError, ValueError):
    """Trigger kwargs are not a JSON-serializable mapping."""


class StorageError(TriggersError):
    """A storage backend could not complete an operation."""


class StorageUnavailableError(StorageError):
    """The storage service could not be reached in time."""


class StorageConflictError(StorageError):
    """An atomic step kept conflicting with concurrent writers and gave up."""


class DispatchError(TriggersError):
    """A ready task instance could not be handed to a runner."""


class TaskNotFoundError(DispatchError, LookupError):
    """A ``run`` directive names no registered :class:`~triggers.task.TriggerTask`."""


class RunnerNotFoundError(DispatchError, LookupError):
    """A runner key names no registered task runner."""
