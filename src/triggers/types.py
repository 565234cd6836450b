"""Task configurations and task instances: plain data and status predicates."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TaskConfig",
    "TaskInstance",
    "STATUS_UNSTARTED",
    "STATUS_SCHEDULED",
    "STATUS_RUNNING",
    "STATUS_FINISHED",
    "STATUS_FAILED",
    "STATUS_SKIPPED",
    "STATUS_REPLAYED",
    "STATUS_ABANDONED",
    "STATUSES",
]

STATUS_UNSTARTED = "unstarted"
STATUS_SCHEDULED = "scheduled"
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUS_REPLAYED = "replayed"
STATUS_ABANDONED = "abandoned"

STATUSES = (
    STATUS_UNSTARTED,
    STATUS_SCHEDULED,
    STATUS_RUNNING,
    STATUS_FINISHED,
    STATUS_FAILED,
    STATUS_SKIPPED,
    STATUS_REPLAYED,
    STATUS_ABANDONED,
)

RESOLVED_STATUSES = frozenset(
    {STATUS_FINISHED, STATUS_SKIPPED, STATUS_REPLAYED, STATUS_ABANDONED}
)
LOGS_IRRELEVANT_STATUSES = frozenset({STATUS_ABANDONED, STATUS_REPLAYED, STATUS_SKIPPED})

META_RESULT = "result"
META_EXCEPTION_TYPE = "exceptionType"
META_EXCEPTION_INFO = "exceptionInfo"
META_EXCEPTION_CONTEXT = "exceptionContext"
META_LOG_LEVEL = "logLevel"
META_LOGS_RESOLVED = "logsResolved"
META_PARENT = "parent"
META_DEPTH = "depth"
META_COOLDOWN = "cooldown"
META_ACTUAL_KWARGS = "actualKwargs"
META_TIMESTAMPS = "timestamps"
TIMESTAMP_CREATED = "created"
TIMESTAMP_LAST_MODIFIED = "lastModified"


@dataclass(frozen=True)
class TaskConfig:
    """One trigger task of a session's configuration (validated; see :mod:`triggers.config`)."""

    name: str
    after: frozenset[str]
    run: str
    and_every: str | None = None
    unless: frozenset[str] = frozenset()
    with_params: Mapping[str, Any] = field(default_factory=dict)
    using: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def extra(self) -> Mapping[str, Any]:
        """The original library's name for :attr:`extras`."""
        return self.extras

    @property
    def triggers(self) -> frozenset[str]:
        """Every trigger this task reacts to (``after`` and ``unless``)."""
        return self.after | self.unless

    def uses_trigger(self, trigger_name: str) -> bool:
        return trigger_name in self.after or trigger_name in self.unless

    def to_dict(self) -> dict[str, Any]:
        """The configuration directives of this task, as JSON-compatible data."""
        data: dict[str, Any] = {
            "after": sorted(self.after - {self.and_every} if self.and_every else self.after),
            "run": self.run,
        }
        if self.and_every:
            data["andEvery"] = self.and_every
        if self.unless:
            data["unless"] = sorted(self.unless)
        if self.with_params:
            data["withParams"] = dict(self.with_params)
        if self.using:
            data["using"] = self.using
        data.update(self.extras)
        return data

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> TaskConfig:
        """Parse and validate directives; raises :class:`ConfigurationError`."""
        from triggers.config import parse_task

        return parse_task(name, data)


class TaskInstance:
    """One execution of a trigger task, named ``<task>#<n>``."""

    LOG_LEVEL_THRESHOLD = logging.ERROR

    STATUS_UNSTARTED = STATUS_UNSTARTED
    STATUS_SCHEDULED = STATUS_SCHEDULED
    STATUS_RUNNING = STATUS_RUNNING
    STATUS_FINISHED = STATUS_FINISHED
    STATUS_FAILED = STATUS_FAILED
    STATUS_SKIPPED = STATUS_SKIPPED
    STATUS_REPLAYED = STATUS_REPLAYED
    STATUS_ABANDONED = STATUS_ABANDONED

    META_RESULT = META_RESULT
    META_EXCEPTION_TYPE = META_EXCEPTION_TYPE
    META_EXCEPTION_INFO = META_EXCEPTION_INFO
    META_EXCEPTION_CONTEXT = META_EXCEPTION_CONTEXT
    META_LOG_LEVEL = META_LOG_LEVEL
    META_LOGS_RESOLVED = META_LOGS_RESOLVED
    META_PARENT = META_PARENT
    META_DEPTH = META_DEPTH
    META_COOLDOWN = META_COOLDOWN
    META_ACTUAL_KWARGS = META_ACTUAL_KWARGS
    META_TIMESTAMPS = META_TIMESTAMPS

    __slots__ = ("name", "config", "status", "kwargs", "abandon_state", "metadata")

    def __init__(
        self,
        name: str,
        config: TaskConfig,
        status: str = STATUS_UNSTARTED,
        kwargs: Mapping[str, Any] | None = None,
        abandon_state: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.status = status
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.abandon_state: dict[str, Any] = dict(abandon_state or {})
        self.metadata: dict[str, Any] = dict(metadata or {})

    # --- identity -------------------------------------------------------
    @property
    def task_name(self) -> str:
        return self.config.name

    @property
    def number(self) -> int:
        return int(self.name.rsplit("#", 1)[1])

    # --- meta-statuses --------------------------------------------------
    @property
    def can_schedule(self) -> bool:
        return self.status == STATUS_UNSTARTED

    @property
    def can_abandon(self) -> bool:
        return (
            self.status == STATUS_UNSTARTED
            and bool(self.config.unless)
            and self.config.unless.issubset(self.abandon_state)
        )

    @property
    def can_run(self) -> bool:
        return (
            self.status == STATUS_UNSTARTED
            and self.config.after.issubset(self.kwargs)
            and not self.can_abandon
        )

    @property
    def can_replay(self) -> bool:
        return self.status == STATUS_FAILED

    @property
    def can_skip(self) -> bool:
        return self.status == STATUS_FAILED

    @property
    def is_resolved(self) -> bool:
        return self.status in RESOLVED_STATUSES

    # --- metadata views -------------------------------------------------
    @property
    def log_level(self) -> int:
        return int(self.metadata.get(META_LOG_LEVEL, logging.NOTSET))

    @property
    def log_level_name(self) -> str:
        return logging.getLevelName(self.log_level)

    @property
    def logs_resolved(self) -> bool:
        return (
            self.log_level < self.LOG_LEVEL_THRESHOLD
            or self.status in LOGS_IRRELEVANT_STATUSES
            or bool(self.metadata.get(META_LOGS_RESOLVED, False))
        )

    @property
    def depth(self) -> int:
        return int(self.metadata.get(META_DEPTH, 0))

    @property
    def cooldown(self) -> float | None:
        value = self.metadata.get(META_COOLDOWN)
        return None if value is None else float(value)

    @property
    def last_modified(self) -> float | None:
        stamps = self.metadata.get(META_TIMESTAMPS) or {}
        value = stamps.get(TIMESTAMP_LAST_MODIFIED)
        return None if value is None else float(value)

    @property
    def parent(self) -> str | None:
        return self.metadata.get(META_PARENT)

    # --- serialization --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.config.name,
            "status": self.status,
            "kwargs": self.kwargs,
            "abandonState": self.abandon_state,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: TaskConfig) -> TaskInstance:
        return cls(
            name=data["name"],
            config=config,
            status=data["status"],
            kwargs=data.get("kwargs"),
            abandon_state=data.get("abandonState"),
            metadata=data.get("metadata"),
        )

    def copy(self) -> TaskInstance:
        import copy

        return TaskInstance(
            self.name,
            self.config,
            self.status,
            copy.deepcopy(self.kwargs),
            copy.deepcopy(self.abandon_state),
            copy.deepcopy(self.metadata),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskInstance) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"<TaskInstance {self.name} {self.status}>"


def instance_name(task_name: str, number: int) -> str:
    return f"{task_name}#{number}"


def task_name_of(instance: str) -> str:
    """The task part of an instance name (``t_x#3`` -> ``t_x``)."""
    task, sep, number = instance.rpartition("#")
    if not sep or not number.isdigit():
        raise KeyError(f"{instance!r} is not a task instance name (expected '<task>#<n>')")
    return task


def sorted_names(names: Iterable[str]) -> list[str]:
    """Instance names sorted by task, then by number (t_x#2 before t_x#10)."""

    def key(name: str) -> tuple[str, int]:
        task, _, number = name.rpartition("#")
        return (task, int(number) if number.isdigit() else -1)

    return sorted(names, key=key)
