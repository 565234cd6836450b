"""The pure core: session state + event -> new state + effects.

Kwargs values are treated as immutable once they enter a step (they come
freshly decoded from storage or validated by the manager), so the core shares
them between instances instead of copying them.

Nothing here does I/O or reads a clock: a :class:`Step` works on a
:class:`SessionSlice` (the part of a session an event concerns, loaded by a
storage backend inside an atomic step), mutates copies, and records what changed
(:class:`SessionChanges`) and which instances became ``scheduled`` and must be
dispatched once the step has committed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from triggers.types import (
    META_DEPTH,
    META_PARENT,
    META_TIMESTAMPS,
    STATUS_ABANDONED,
    STATUS_FAILED,
    STATUS_REPLAYED,
    STATUS_SCHEDULED,
    STATUS_SKIPPED,
    STATUS_UNSTARTED,
    TIMESTAMP_CREATED,
    TIMESTAMP_LAST_MODIFIED,
    TaskConfig,
    TaskInstance,
    instance_name,
)

__all__ = ["SessionSlice", "SessionChanges", "Step", "merge_kwargs"]


@dataclass
class SessionSlice:
    """The part of one session that an atomic step reads.

    ``tasks`` holds every task using one of the step's triggers plus the tasks of
    the named instances; ``instances`` every ``unstarted`` instance of the former
    plus the named instances that exist; ``latest_kwargs`` the latest kwargs of
    every trigger those tasks use (only triggers that fired); ``counters`` how many
    instances each of those tasks has ever had. ``version`` is an opaque token for
    backends that commit optimistically.
    """

    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    instances: dict[str, TaskInstance] = field(default_factory=dict)
    latest_kwargs: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    version: Any = None


@dataclass
class SessionChanges:
    """What one step writes: upserted tasks and instances, latest kwargs, counters."""

    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    instances: dict[str, TaskInstance] = field(default_factory=dict)
    latest_kwargs: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.instances or self.latest_kwargs or self.counters)


def merge_kwargs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two mappings recursively; values of ``override`` win on conflict."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_kwargs(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Step:
    """One atomic change to a session, computed on a slice without I/O."""

    def __init__(self, slice_: SessionSlice, now: float, session: str = "") -> None:
        self.slice = slice_
        self.now = now
        self.session = session
        self.changes = SessionChanges()
        self.scheduled: list[TaskInstance] = []

    # --- bookkeeping ------------------------------------------------------
    def _touch(self, instance: TaskInstance, status: str | None = None) -> None:
        stamps = instance.metadata.setdefault(META_TIMESTAMPS, {})
        if status is not None:
            instance.status = status
            stamps[status] = self.now
        stamps[TIMESTAMP_LAST_MODIFIED] = self.now
        self.slice.instances[instance.name] = instance
        self.changes.instances[instance.name] = instance

    def instance(self, name: str) -> TaskInstance:
        """The named instance; ``KeyError`` naming it when the session has none."""
        try:
            return self.slice.instances[name]
        except KeyError:
            where = f"session {self.session!r}" if self.session else "the session"
            raise KeyError(f"{where} has no task instance named {name!r}") from None

    def new_instance(
        self,
        config: TaskConfig,
        kwargs: Mapping[str, Any] | None = None,
        abandon_state: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        number = self.slice.counters.get(config.name, 0)
        self.slice.counters[config.name] = number + 1
        self.changes.counters[config.name] = number + 1
        instance = TaskInstance(
            instance_name(config.name, number),
            config,
            STATUS_UNSTARTED,
            kwargs=kwargs,
            abandon_state=abandon_state,
            metadata=metadata,
        )
        instance.metadata.setdefault(META_TIMESTAMPS, {})[TIMESTAMP_CREATED] = self.now
        self._touch(instance, STATUS_UNSTARTED)
        return instance

    def schedule(self, instance: TaskInstance) -> None:
        self._touch(instance, STATUS_SCHEDULED)
        self.scheduled.append(instance)

    # --- events -----------------------------------------------------------
    def configure(self, tasks: Mapping[str, TaskConfig]) -> None:
        self.changes.tasks.update(tasks)
        self.slice.tasks.update(tasks)

    def fire(self, trigger: str, kwargs: Mapping[str, Any]) -> list[TaskInstance]:
        """Apply a trigger (SPEC section 4); returns the instances it scheduled."""
        first_scheduled = len(self.scheduled)
        concerned: list[TaskInstance] = []
        for config in sorted(self.slice.tasks.values(), key=lambda c: c.name):
            if not config.uses_trigger(trigger):
                continue
            if self.slice.counters.get(config.name, 0) == 0:
                concerned.append(self._create_receiving(config, trigger, kwargs))
                continue
            took_it = False
            for instance in self._unstarted_of(config.name):
                # Every unstarted instance is re-checked below, not only those that take
                # the trigger: a configuration change may have made a waiting one ready.
                concerned.append(instance)
                if self._has_received(instance, trigger):
                    continue
                self._receive(instance, trigger, kwargs)
                took_it = True
            if trigger == config.and_every and not took_it:
                concerned.append(self._create_receiving(config, trigger, kwargs))

        for instance in concerned:
            if instance.status != STATUS_UNSTARTED:
                continue
            if instance.can_abandon:
                self._touch(instance, STATUS_ABANDONED)
            elif instance.can_run:
                self.schedule(instance)

        self.slice.latest_kwargs[trigger] = kwargs
        self.changes.latest_kwargs[trigger] = kwargs
        return self.scheduled[first_scheduled:]

    def _unstarted_of(self, task: str) -> list[TaskInstance]:
        found = [
            i
            for i in self.slice.instances.values()
            if i.config.name == task and i.status == STATUS_UNSTARTED
        ]
        return sorted(found, key=lambda i: i.number)

    @staticmethod
    def _has_received(instance: TaskInstance, trigger: str) -> bool:
        config = instance.config
        in_after = trigger in config.after
        in_unless = trigger in config.unless
        return (not in_after or trigger in instance.kwargs) and (
            not in_unless or trigger in instance.abandon_state
        )

    def _receive(self, instance: TaskInstance, trigger: str, kwargs: Mapping[str, Any]) -> None:
        if trigger in instance.config.after and trigger not in instance.kwargs:
            instance.kwargs[trigger] = kwargs
        if trigger in instance.config.unless and trigger not in instance.abandon_state:
            instance.abandon_state[trigger] = kwargs
        self._touch(instance)

    def _create_receiving(
        self, config: TaskConfig, trigger: str, kwargs: Mapping[str, Any]
    ) -> TaskInstance:
        latest = self.slice.latest_kwargs
        instance = self.new_instance(
            config,
            kwargs={t: latest[t] for t in config.after - {trigger} if t in latest},
            abandon_state={t: latest[t] for t in config.unless - {trigger} if t in latest},
        )
        self._receive(instance, trigger, kwargs)
        return instance

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> TaskInstance:
        instance = self.instance(name)
        instance.metadata.update(copy.deepcopy(dict(metadata)))
        self._touch(instance)
        return instance

    def set_status(
        self, name: str, status: str, metadata: Mapping[str, Any] | None = None
    ) -> TaskInstance:
        instance = self.instance(name)
        if metadata:
            instance.metadata.update(copy.deepcopy(dict(metadata)))
        self._touch(instance, status)
        return instance

    def clone(
        self,
        instance: TaskInstance,
        replacement_kwargs: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """A new instance of the same task, naming ``instance`` as its parent."""
        meta = {META_PARENT: instance.name, META_DEPTH: instance.depth + 1}
        if metadata:
            meta.update(metadata)
        return self.new_instance(
            instance.config,
            kwargs=copy.deepcopy(
                dict(replacement_kwargs) if replacement_kwargs is not None else instance.kwargs
            ),
            abandon_state=copy.deepcopy(instance.abandon_state),
            metadata=meta,
        )

    def replay(
        self,
        name: str,
        replacement_kwargs: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        clone_metadata: Mapping[str, Any] | None = None,
        allowed: tuple[str, ...] = (STATUS_FAILED,),
    ) -> TaskInstance:
        """Mark ``name`` replayed and schedule a clone of it; returns the clone."""
        instance = self.instance(name)
        require_status(instance, allowed, "replay")
        self.set_status(name, STATUS_REPLAYED, metadata)
        clone = self.clone(instance, replacement_kwargs, clone_metadata)
        self.schedule(clone)
        return clone

    def skip(self, name: str) -> TaskInstance:
        instance = self.instance(name)
        require_status(instance, (STATUS_FAILED,), "skip")
        return self.set_status(name, STATUS_SKIPPED)


def require_status(instance: TaskInstance, allowed: tuple[str, ...], action: str) -> None:
    if instance.status not in allowed:
        raise ValueError(
            f"cannot {action} task instance {instance.name!r}: its status is "
            f"{instance.status!r}, expected {' or '.join(repr(s) for s in allowed)}"
        )
