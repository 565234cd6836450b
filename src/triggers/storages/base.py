"""The storage contract: a base class that does the work, small primitives per backend.

A backend keeps, per session uid, the task configurations, the task instances,
the latest kwargs of every trigger and a counter of instances per task, as
JSON-compatible data. Every change runs as an *atomic step* (:meth:`run_step`):

1. ``_transaction()`` opens the step (a lock or a database transaction; a no-op
   for optimistic backends);
2. ``_read_slice(triggers, instance_names)`` loads only what the step concerns;
3. the pure core (:mod:`triggers.engine`) computes the changes;
4. ``_write_changes(slice, changes)`` commits them (optimistic backends raise
   :class:`StepConflict` when someone else changed the slice; the step is retried).

The simplest custom backend implements only ``_load_session`` and
``_save_session`` (whole-session JSON documents) and, if several processes share
it, ``_transaction``; the base class builds everything else on top of them.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from triggers.config import parse_task
from triggers.engine import SessionChanges, SessionSlice, Step
from triggers.exceptions import StorageConflictError
from triggers.registry import ClassRegistry
from triggers.types import (
    STATUS_UNSTARTED,
    TaskConfig,
    TaskInstance,
    instance_name,
    sorted_names,
    task_name_of,
)

__all__ = ["BaseTriggerStorage", "storage_backends", "StepConflict", "SessionData"]

R = TypeVar("R")


class StepConflict(Exception):
    """Raised by ``_write_changes`` of optimistic backends: retry the step."""


class SessionData:
    """A whole session as plain data (used for inspection and by simple backends)."""

    def __init__(
        self,
        tasks: Mapping[str, Any] | None = None,
        instances: Mapping[str, Any] | None = None,
        latest_kwargs: Mapping[str, Any] | None = None,
        counters: Mapping[str, int] | None = None,
        version: Any = None,
    ) -> None:
        self.version = version  # opaque token for optimistic backends (see SessionSlice)
        self.tasks: dict[str, Any] = dict(tasks or {})  # name -> directives
        self.instances: dict[str, Any] = dict(instances or {})  # name -> instance dict
        self.latest_kwargs: dict[str, Any] = dict(latest_kwargs or {})
        self.counters: dict[str, int] = dict(counters or {})

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "instances": self.instances,
            "latestKwargs": self.latest_kwargs,
            "counters": self.counters,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SessionData:
        data = data or {}
        return cls(
            data.get("tasks"), data.get("instances"), data.get("latestKwargs"), data.get("counters")
        )

    def configs(self) -> dict[str, TaskConfig]:
        return {name: parse_task(name, d, check_runner=False) for name, d in self.tasks.items()}

    def apply(self, changes: SessionChanges) -> None:
        for name, config in changes.tasks.items():
            self.tasks[name] = config.to_dict()
        for name, instance in changes.instances.items():
            self.instances[name] = copy.deepcopy(instance.to_dict())
        self.latest_kwargs.update(copy.deepcopy(changes.latest_kwargs))
        self.counters.update(changes.counters)

    def slice(self, triggers: Iterable[str], instance_names: Iterable[str]) -> SessionSlice:
        """The part of this session a step on ``triggers`` / ``instance_names`` reads."""
        triggers = set(triggers)
        names = set(instance_names)
        wanted_tasks = {task_name_of(n) for n in names}
        configs: dict[str, TaskConfig] = {}
        firing: set[str] = set()
        for name, directives in self.tasks.items():
            config = None
            if name in wanted_tasks:
                config = parse_task(name, directives, check_runner=False)
            if triggers:
                config = config or parse_task(name, directives, check_runner=False)
                if config.triggers & triggers:
                    firing.add(name)
                elif name not in wanted_tasks:
                    continue
            if config is not None:
                configs[name] = config
        instances: dict[str, TaskInstance] = {}
        for name, data in self.instances.items():
            task = data["task"]
            if task not in configs:
                continue
            if name in names or (task in firing and data["status"] == STATUS_UNSTARTED):
                instances[name] = TaskInstance.from_dict(copy.deepcopy(data), configs[task])
        used = set().union(*(configs[t].triggers for t in firing)) if firing else set()
        return SessionSlice(
            tasks=configs,
            instances=instances,
            latest_kwargs={
                t: copy.deepcopy(self.latest_kwargs[t]) for t in used if t in self.latest_kwargs
            },
            counters={t: self.counters.get(t, 0) for t in configs},
            version=self.version,
        )


storage_backends: ClassRegistry[BaseTriggerStorage] = ClassRegistry(
    "triggers.storages", "storage backend"
)


class BaseTriggerStorage:
    """Session storage. Subclasses implement the primitives; see the module docs."""

    #: How often an optimistic step is retried before :class:`StorageConflictError`.
    max_step_attempts: ClassVar[int] = 50

    def __init__(self, uid: str) -> None:
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"session uid must be a non-empty string, got {uid!r}")
        self.uid = uid
        self._cache: SessionData | None = None
        self._local = threading.local()

    # The session held by acquire_lock() belongs to the thread that holds it.
    @property
    def _locked(self) -> SessionData | None:
        return getattr(self._local, "locked", None)

    @_locked.setter
    def _locked(self, value: SessionData | None) -> None:
        self._local.locked = value

    @property
    def _locked_original(self) -> SessionData | None:
        return getattr(self._local, "original", None)

    @_locked_original.setter
    def _locked_original(self, value: SessionData | None) -> None:
        self._local.original = value

    # ------------------------------------------------------------------
    # Primitives: override these.
    # ------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Make the enclosed read and write one atomic step (default: nothing)."""
        yield

    def _load_session(self) -> Mapping[str, Any] | None:
        """Return the whole session as a JSON-compatible document (or None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _load_session")

    def _save_session(self, data: Mapping[str, Any]) -> None:
        """Store the whole session document."""
        raise NotImplementedError(f"{type(self).__name__} must implement _save_session")

    def _read_session(self) -> SessionData:
        return SessionData.from_json(self._load_session())

    def _read_slice(
        self, triggers: frozenset[str], instance_names: frozenset[str]
    ) -> SessionSlice:
        return self._read_session().slice(triggers, instance_names)

    def _write_changes(self, slice_: SessionSlice, changes: SessionChanges) -> None:
        data = self._read_session()
        data.apply(changes)
        self._save_session(data.to_json())

    def options(self) -> dict[str, Any]:
        """Non-secret constructor options a worker needs to rebuild this storage."""
        return {}

    # --- session lifecycle (optional per backend) ----------------------------
    @classmethod
    def list_sessions(cls, **options: Any) -> list[str]:
        raise NotImplementedError(f"{cls.__name__} cannot list sessions")

    def delete_session(self) -> None:
        """Remove every record of this session."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete sessions")

    # ------------------------------------------------------------------
    # The atomic step
    # ------------------------------------------------------------------
    def run_step(
        self,
        plan: Callable[[Step], R],
        triggers: Iterable[str] = (),
        instance_names: Iterable[str] = (),
    ) -> tuple[R, Step]:
        """Run ``plan`` on a fresh slice and commit its changes atomically.

        ``plan`` must be pure (it may be called again when an optimistic commit
        conflicts). Exceptions raised by ``plan`` abort the step: nothing is
        written. Returns what ``plan`` returned and the committed step.
        """
        triggers = frozenset(triggers)
        instance_names = frozenset(instance_names)
        if self._locked is not None:
            raise RuntimeError(
                f"session {self.uid!r}: manager operations cannot run inside acquire_lock() "
                "(their tasks would be dispatched before save()); change the locked session "
                "directly, or call the manager after the block"
            )
        for _attempt in range(self.max_step_attempts):
            with self._transaction():
                slice_ = self._read_slice(triggers, instance_names)
                step = Step(slice_, time.time(), self.uid)
                result = plan(step)
                if step.changes:
                    try:
                        self._write_changes(slice_, step.changes)
                    except StepConflict:
                        continue
            self._cache = None
            return result, step
        raise StorageConflictError(
            f"session {self.uid!r}: gave up after {self.max_step_attempts} conflicting attempts"
        )

    # ------------------------------------------------------------------
    # Inspection (reads the whole session; cached until invalidate_cache())
    # ------------------------------------------------------------------
    def _session(self) -> SessionData:
        if self._locked is not None:
            return self._locked
        if self._cache is None:
            self._cache = self._read_session()
        return self._cache

    def invalidate_cache(self) -> None:
        self._cache = None

    @property
    def tasks(self) -> dict[str, TaskConfig]:
        return self._session().configs()

    @property
    def instances(self) -> dict[str, TaskInstance]:
        data = self._session()
        configs = data.configs()
        return {
            name: TaskInstance.from_dict(copy.deepcopy(data.instances[name]), configs[task])
            for name in sorted_names(data.instances)
            if (task := data.instances[name]["task"]) in configs
        }

    @property
    def latest_kwargs(self) -> dict[str, Any]:
        return copy.deepcopy(self._session().latest_kwargs)

    @property
    def metadata(self) -> dict[str, Any]:
        """Session metadata: the latest kwargs per trigger and instance counters."""
        data = self._session()
        return {
            "latest_kwargs": copy.deepcopy(data.latest_kwargs),
            "counters": dict(data.counters),
        }

    def __getitem__(self, name: str) -> TaskInstance:
        instances = self.instances
        try:
            return instances[name]
        except KeyError:
            raise KeyError(f"session {self.uid!r} has no task instance named {name!r}") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.instances.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._session().instances

    def __iter__(self) -> Iterator[TaskInstance]:
        return iter(list(self.instances.values()))

    def __len__(self) -> int:
        return len(self._session().instances)

    def instances_of_task(self, task: str | TaskConfig) -> list[TaskInstance]:
        name = task.name if isinstance(task, TaskConfig) else task
        return [i for i in self.instances.values() if i.config.name == name]

    def get_unresolved_tasks(self) -> list[TaskConfig]:
        """Tasks with no instance yet, or with at least one unresolved instance."""
        instances = self.instances
        result = []
        for name, config in sorted(self.tasks.items()):
            mine = [i for i in instances.values() if i.config.name == name]
            if not mine or any(not i.is_resolved for i in mine):
                result.append(config)
        return result

    def get_unresolved_instances(self) -> list[TaskInstance]:
        return [i for i in self.instances.values() if not i.is_resolved]

    def get_instances_with_unresolved_logs(self) -> list[TaskInstance]:
        return [i for i in self.instances.values() if not i.logs_resolved]

    def debug_repr(self) -> dict[str, Any]:
        """Everything in the session, as plain data, for debugging and tests."""
        data = self._session()
        return {
            "uid": self.uid,
            "tasks": copy.deepcopy(data.tasks),
            "instances": {
                n: copy.deepcopy(data.instances[n]) for n in sorted_names(data.instances)
            },
            "metadata": {"latest_kwargs": copy.deepcopy(data.latest_kwargs)},
        }

    # ------------------------------------------------------------------
    # Custom atomic changes
    # ------------------------------------------------------------------
    @contextmanager
    def acquire_lock(self) -> Iterator[BaseTriggerStorage]:
        """Hold the session for an atomic change made by custom code.

        Yields this storage: reads see the locked session, ``create_instance`` /
        ``clone_instance`` / item assignment change it, and ``save()`` writes it.
        Leaving the block without ``save()`` discards the changes. On optimistic
        backends ``save()`` raises :class:`StorageConflictError` if another
        process changed the session meanwhile.
        """
        if self._locked is not None:
            yield self
            return
        with self._transaction():
            data = self._read_session()
            self._locked = data
            self._locked_original = copy.deepcopy(data)
            try:
                yield self
            finally:
                self._locked = None
                self._locked_original = None
                self._cache = None

    def _require_lock(self, action: str) -> SessionData:
        if self._locked is None:
            raise RuntimeError(
                f"{action} needs the session lock: use `with storage.acquire_lock():`"
            )
        return self._locked

    def __setitem__(self, name: str, instance: TaskInstance) -> None:
        data = self._require_lock("storing an instance")
        data.instances[name] = copy.deepcopy(instance.to_dict())

    def create_instance(
        self,
        task: str | TaskConfig,
        kwargs: Mapping[str, Any] | None = None,
        abandon_state: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str = STATUS_UNSTARTED,
    ) -> TaskInstance:
        """Create (in the locked session) a new instance of ``task``."""
        data = self._require_lock("create_instance")
        config = self._config(data, task)
        number = data.counters.get(config.name, 0)
        data.counters[config.name] = number + 1
        now = time.time()
        meta = dict(metadata or {})
        meta.setdefault("timestamps", {}).update(
            {"created": now, "lastModified": now, status: now}
        )
        instance = TaskInstance(
            instance_name(config.name, number), config, status, kwargs, abandon_state, meta
        )
        data.instances[instance.name] = copy.deepcopy(instance.to_dict())
        return instance

    def clone_instance(self, instance: str | TaskInstance) -> TaskInstance:
        """Create (in the locked session) a copy of ``instance`` naming it as parent."""
        data = self._require_lock("clone_instance")
        source = self._locked_instance(data, instance)
        return self.create_instance(
            source.config,
            kwargs=copy.deepcopy(source.kwargs),
            abandon_state=copy.deepcopy(source.abandon_state),
            metadata={"parent": source.name, "depth": source.depth + 1},
        )

    def save(self) -> None:
        """Write the locked session (only what changed since acquire_lock())."""
        data = self._require_lock("save")
        original = self._locked_original or SessionData()
        configs = data.configs()
        changes = SessionChanges(
            tasks={n: configs[n] for n, d in data.tasks.items() if original.tasks.get(n) != d},
            instances={
                n: TaskInstance.from_dict(copy.deepcopy(d), configs[d["task"]])
                for n, d in data.instances.items()
                if original.instances.get(n) != d
            },
            latest_kwargs={
                t: k for t, k in data.latest_kwargs.items() if original.latest_kwargs.get(t) != k
            },
            counters={t: c for t, c in data.counters.items() if original.counters.get(t) != c},
        )
        if changes:
            slice_ = SessionSlice(version=original.version)
            try:
                self._write_changes(slice_, changes)
            except StepConflict:
                raise StorageConflictError(
                    f"session {self.uid!r} changed while it was held by acquire_lock(); "
                    "nothing was saved"
                ) from None
        self._locked_original = copy.deepcopy(data)

    @staticmethod
    def _config(data: SessionData, task: str | TaskConfig) -> TaskConfig:
        if isinstance(task, TaskConfig):
            return task
        if task not in data.tasks:
            raise KeyError(f"session has no task named {task!r}")
        return parse_task(task, data.tasks[task], check_runner=False)

    def _locked_instance(self, data: SessionData, instance: str | TaskInstance) -> TaskInstance:
        name = instance.name if isinstance(instance, TaskInstance) else instance
        if name not in data.instances:
            raise KeyError(f"session {self.uid!r} has no task instance named {name!r}")
        raw = data.instances[name]
        return TaskInstance.from_dict(copy.deepcopy(raw), self._config(data, raw["task"]))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} uid={self.uid!r}>"
