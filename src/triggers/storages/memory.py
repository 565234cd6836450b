"""Process-wide in-memory storage, for tests and scripts.

Sessions live in a dictionary shared by every thread of the process (and lost
when it exits). Records are kept as JSON text, so an instance read from the
storage never aliases the stored one, exactly as with durable backends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from triggers.engine import SessionChanges, SessionSlice
from triggers.storages.base import BaseTriggerStorage, SessionData
from triggers.storages.codec import decode_config, decode_instance, dumps, encode_instance, loads
from triggers.types import STATUS_UNSTARTED, TaskConfig, task_name_of

__all__ = ["MemoryStorageBackend"]


class _Session:
    __slots__ = (
        "lock", "tasks", "trigger_index", "instances", "unstarted", "latest_kwargs",
        "counters", "modified",
    )

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tasks: dict[str, str] = {}
        self.trigger_index: dict[str, set[str]] = {}
        self.instances: dict[str, str] = {}
        self.unstarted: dict[str, set[str]] = {}
        self.latest_kwargs: dict[str, str] = {}
        self.counters: dict[str, int] = {}
        self.modified = time.time()

    @property
    def empty(self) -> bool:
        return not (self.tasks or self.instances or self.latest_kwargs)

    def clear(self) -> None:
        with self.lock:
            for records in (
                self.tasks, self.trigger_index, self.instances, self.unstarted, self.latest_kwargs,
            ):
                records.clear()
            self.counters.clear()


_sessions: dict[str, _Session] = {}
_sessions_lock = threading.Lock()


class MemoryStorageBackend(BaseTriggerStorage):
    """Keeps sessions in this process's memory; thread-safe."""

    def __init__(self, uid: str) -> None:
        super().__init__(uid)
        with _sessions_lock:
            self._s = _sessions.setdefault(uid, _Session())

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._s.lock:
            yield

    def _configs(self, names: set[str]) -> dict[str, TaskConfig]:
        tasks = self._s.tasks
        return {n: decode_config(n, tasks[n]) for n in names if n in tasks}

    def _read_slice(self, triggers: frozenset[str], instance_names: frozenset[str]) -> SessionSlice:
        s = self._s
        firing: set[str] = set()
        for trigger in triggers:
            firing |= s.trigger_index.get(trigger, set())
        wanted = {task_name_of(n) for n in instance_names}
        configs = self._configs(firing | wanted)
        names = {n for n in instance_names if n in s.instances}
        for task in firing:
            names |= s.unstarted.get(task, set())
        instances = {
            n: inst
            for n in names
            if (inst := decode_instance(s.instances[n], configs)) is not None
        }
        used: set[str] = set()
        for task in firing:
            used |= configs[task].triggers
        return SessionSlice(
            tasks=configs,
            instances=instances,
            latest_kwargs={t: loads(s.latest_kwargs[t]) for t in used if t in s.latest_kwargs},
            counters={t: s.counters.get(t, 0) for t in configs},
        )

    def _write_changes(self, slice_: SessionSlice, changes: SessionChanges) -> None:
        s = self._s
        for name, config in changes.tasks.items():
            old = s.tasks.get(name)
            if old is not None:
                for trigger in decode_config(name, old).triggers:
                    s.trigger_index.get(trigger, set()).discard(name)
            s.tasks[name] = dumps(config.to_dict())
            for trigger in config.triggers:
                s.trigger_index.setdefault(trigger, set()).add(name)
        for name, instance in changes.instances.items():
            s.instances[name] = encode_instance(instance)
            waiting = s.unstarted.setdefault(instance.config.name, set())
            if instance.status == STATUS_UNSTARTED:
                waiting.add(name)
            else:
                waiting.discard(name)
        for trigger, kwargs in changes.latest_kwargs.items():
            s.latest_kwargs[trigger] = dumps(kwargs)
        s.counters.update(changes.counters)
        s.modified = time.time()

    def _read_session(self) -> SessionData:
        s = self._s
        with s.lock:
            return SessionData(
                tasks={n: loads(t) for n, t in s.tasks.items()},
                instances={n: loads(i) for n, i in s.instances.items()},
                latest_kwargs={t: loads(k) for t, k in s.latest_kwargs.items()},
                counters=dict(s.counters),
            )

    # --- lifecycle --------------------------------------------------------
    @classmethod
    def list_sessions(cls, **options: Any) -> list[str]:
        with _sessions_lock:
            return sorted(uid for uid, s in _sessions.items() if not s.empty)

    def delete_session(self) -> None:
        self._s.clear()
        self.invalidate_cache()

    @classmethod
    def purge(cls, older_than: float, **options: Any) -> int:
        """Delete sessions not modified for ``older_than`` seconds; returns how many."""
        cutoff = time.time() - older_than
        with _sessions_lock:
            old = [s for s in _sessions.values() if s.modified < cutoff and not s.empty]
        for session in old:
            session.clear()
        return len(old)

    @classmethod
    def clear_all(cls) -> None:
        """Empty every session of this process (for tests).

        Sessions are emptied in place, so storage objects built earlier see the
        same (empty) session as those built later.
        """
        with _sessions_lock:
            sessions = list(_sessions.values())
        for session in sessions:
            session.clear()
