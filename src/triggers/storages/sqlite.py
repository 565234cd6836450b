"""SQLite storage: the embedded, durable default.

One database file holds every session. Each atomic step is a
``BEGIN IMMEDIATE`` transaction, which SQLite serializes across threads and
processes on the machine; a crashed process's transaction is rolled back by
SQLite, so nothing stays locked. WAL journaling lets readers work while a step
commits. Records are JSON text; a fire reads only the tasks that use the trigger
(through a trigger index), their unstarted instances and the latest kwargs of
their triggers.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from triggers.engine import SessionChanges, SessionSlice
from triggers.exceptions import StorageError, StorageUnavailableError
from triggers.storages.base import BaseTriggerStorage, SessionData
from triggers.storages.codec import decode_config, dumps, encode_instance, loads
from triggers.types import STATUS_UNSTARTED, TaskConfig, TaskInstance, task_name_of

__all__ = ["SqliteStorageBackend", "DEFAULT_SQLITE_PATH"]

DEFAULT_SQLITE_PATH = "triggers.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS trigger_sessions (
    uid TEXT PRIMARY KEY,
    created REAL NOT NULL,
    modified REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_tasks (
    uid TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    counter INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, name)
);
CREATE TABLE IF NOT EXISTS trigger_index (
    uid TEXT NOT NULL,
    trigger TEXT NOT NULL,
    task TEXT NOT NULL,
    PRIMARY KEY (uid, trigger, task)
);
CREATE TABLE IF NOT EXISTS trigger_instances (
    uid TEXT NOT NULL,
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (uid, name)
);
CREATE INDEX IF NOT EXISTS trigger_instances_waiting
    ON trigger_instances (uid, task, status);
CREATE TABLE IF NOT EXISTS trigger_kwargs (
    uid TEXT NOT NULL,
    trigger TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    PRIMARY KEY (uid, trigger)
);
"""

_local = threading.local()
_schema_ready: set[str] = set()
_schema_lock = threading.Lock()


def default_path() -> str:
    return os.environ.get("TRIGGERS_SQLITE_PATH", DEFAULT_SQLITE_PATH)


class SqliteStorageBackend(BaseTriggerStorage):
    """Sessions in a SQLite file, safe across threads and processes on one machine.

    :param uid: the session uid.
    :param path: database file (default ``$TRIGGERS_SQLITE_PATH`` or
        ``./triggers.sqlite3``); created with its schema on first use.
    :param timeout: seconds to wait for another process's step before
        :class:`StorageUnavailableError`.
    """

    def __init__(self, uid: str, path: str | os.PathLike[str] | None = None, timeout: float = 30.0):
        super().__init__(uid)
        self.path = str(Path(path if path is not None else default_path()).absolute())
        self.timeout = float(timeout)

    def options(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout}

    # --- connections --------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the database (one per thread and file)."""
        conns: dict[tuple[int, str], sqlite3.Connection] = _local.__dict__.setdefault("conns", {})
        key = (os.getpid(), self.path)
        conn = conns.get(key)
        if conn is None:
            conn = self._connect()
            conns[key] = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # SQLite's own busy handler sleeps in steps of 1 ms and more, which makes
            # contended steps slow; _busy_retry() polls in sub-millisecond steps instead.
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            self._busy_retry(lambda: conn.execute("PRAGMA journal_mode = WAL"), "opening")
            conn.execute("PRAGMA synchronous = NORMAL")
            with _schema_lock:
                if self.path not in _schema_ready:
                    self._busy_retry(lambda: conn.executescript(SCHEMA), "creating the schema")
                    _schema_ready.add(self.path)
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"cannot open SQLite database {self.path!r}: {exc}")
        return conn

    def _busy_retry(self, attempt: Callable[[], object], doing: str) -> None:
        """Run ``attempt`` until the database is not locked, for at most ``timeout`` s."""
        deadline = time.monotonic() + self.timeout
        delay = 0.0001
        while True:
            try:
                attempt()
                return
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if "locked" not in text and "busy" not in text:
                    raise
                if time.monotonic() >= deadline:
                    raise StorageUnavailableError(
                        f"session {self.uid!r}: SQLite database {self.path!r} stayed locked "
                        f"for {self.timeout}s while {doing} ({exc})"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.002)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self.connection
        if conn.in_transaction:  # nested step inside acquire_lock()
            yield
            return
        self._busy_retry(lambda: conn.execute("BEGIN IMMEDIATE"), "starting a step")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StorageError(f"session {self.uid!r}: commit failed: {exc}")

    # --- reads ---------------------------------------------------------------
    def _read_slice(self, triggers: frozenset[str], instance_names: frozenset[str]) -> SessionSlice:
        conn = self.connection
        uid = self.uid
        configs: dict[str, TaskConfig] = {}
        counters: dict[str, int] = {}
        firing: list[str] = []
        wanted = {task_name_of(n) for n in instance_names}
        # One query for the tasks using the triggers (firing = 1) and the tasks of
        # the named instances (firing = 0).
        parts: list[str] = []
        params: list[str] = []
        if triggers:
            parts.append(
                "SELECT t.name, t.config, t.counter, 1 FROM trigger_index i "
                "JOIN trigger_tasks t ON t.uid = i.uid AND t.name = i.task "
                f"WHERE i.uid = ? AND i.trigger IN ({','.join('?' * len(triggers))})"
            )
            params += [uid, *triggers]
        if wanted:
            parts.append(
                "SELECT name, config, counter, 0 FROM trigger_tasks "
                f"WHERE uid = ? AND name IN ({','.join('?' * len(wanted))})"
            )
            params += [uid, *wanted]
        if parts:
            for name, config, counter, is_firing in conn.execute(
                " UNION ALL ".join(parts), params
            ):
                if name not in configs:
                    configs[name] = decode_config(name, config)
                    counters[name] = counter
                if is_firing and name not in firing:
                    firing.append(name)
        # One query for the unstarted instances of the firing tasks and the named ones
        # (UNION ALL, not OR: each part keeps its own index).
        parts = []
        params = []
        if firing:
            parts.append(
                "SELECT data FROM trigger_instances WHERE uid = ? "
                f"AND task IN ({','.join('?' * len(firing))}) AND status = ?"
            )
            params += [uid, *firing, STATUS_UNSTARTED]
        if instance_names:
            parts.append(
                "SELECT data FROM trigger_instances WHERE uid = ? "
                f"AND name IN ({','.join('?' * len(instance_names))})"
            )
            params += [uid, *instance_names]
        rows: list[str] = []
        if parts:
            rows = [r[0] for r in conn.execute(" UNION ALL ".join(parts), params)]
        instances: dict[str, TaskInstance] = {}
        for text in rows:
            data = loads(text)
            if data["task"] in configs:
                instances[data["name"]] = TaskInstance.from_dict(data, configs[data["task"]])
        latest: dict[str, Any] = {}
        used = set().union(*(configs[t].triggers for t in firing)) if firing else set()
        if used:
            marks = ",".join("?" * len(used))
            latest = {
                t: loads(k)
                for t, k in conn.execute(
                    "SELECT trigger, kwargs FROM trigger_kwargs "
                    f"WHERE uid = ? AND trigger IN ({marks})",
                    (uid, *used),
                )
            }
        return SessionSlice(configs, instances, latest, counters)

    def _read_session(self) -> SessionData:
        conn = self.connection
        uid = self.uid
        data = SessionData()
        for name, config, counter in conn.execute(
            "SELECT name, config, counter FROM trigger_tasks WHERE uid = ?", (uid,)
        ):
            data.tasks[name] = loads(config)
            data.counters[name] = counter
        for name, text in conn.execute(
            "SELECT name, data FROM trigger_instances WHERE uid = ?", (uid,)
        ):
            data.instances[name] = loads(text)
        for trigger, kwargs in conn.execute(
            "SELECT trigger, kwargs FROM trigger_kwargs WHERE uid = ?", (uid,)
        ):
            data.latest_kwargs[trigger] = loads(kwargs)
        return data

    # --- writes --------------------------------------------------------------
    def _write_changes(self, slice_: SessionSlice, changes: SessionChanges) -> None:
        conn = self.connection
        uid = self.uid
        now = time.time()
        if changes.tasks or changes.latest_kwargs:  # events; purge() goes by these
            conn.execute(
                "INSERT INTO trigger_sessions (uid, created, modified) VALUES (?, ?, ?) "
                "ON CONFLICT (uid) DO UPDATE SET modified = excluded.modified",
                (uid, now, now),
            )
        for name, config in changes.tasks.items():
            conn.execute(
                "INSERT INTO trigger_tasks (uid, name, config) VALUES (?, ?, ?) "
                "ON CONFLICT (uid, name) DO UPDATE SET config = excluded.config",
                (uid, name, dumps(config.to_dict())),
            )
            conn.execute("DELETE FROM trigger_index WHERE uid = ? AND task = ?", (uid, name))
            conn.executemany(
                "INSERT INTO trigger_index (uid, trigger, task) VALUES (?, ?, ?)",
                [(uid, trigger, name) for trigger in sorted(config.triggers)],
            )
        if changes.counters:
            conn.executemany(
                "UPDATE trigger_tasks SET counter = ? WHERE uid = ? AND name = ?",
                [(n, uid, task) for task, n in changes.counters.items()],
            )
        if changes.instances:
            conn.executemany(
                "INSERT INTO trigger_instances (uid, name, task, status, data) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid, name) DO UPDATE SET "
                "status = excluded.status, data = excluded.data",
                [
                    (uid, i.name, i.config.name, i.status, encode_instance(i))
                    for i in changes.instances.values()
                ],
            )
        if changes.latest_kwargs:
            conn.executemany(
                "INSERT INTO trigger_kwargs (uid, trigger, kwargs) VALUES (?, ?, ?) "
                "ON CONFLICT (uid, trigger) DO UPDATE SET kwargs = excluded.kwargs",
                [(uid, t, dumps(k)) for t, k in changes.latest_kwargs.items()],
            )

    # --- lifecycle -------------------------------------------------------------
    @classmethod
    def list_sessions(cls, path: str | None = None, **options: Any) -> list[str]:
        storage = cls("-", path=path)
        return [r[0] for r in storage.connection.execute(
            "SELECT uid FROM trigger_sessions ORDER BY uid"
        )]

    def delete_session(self) -> None:
        with self._transaction():
            for table in (
                "trigger_sessions", "trigger_tasks", "trigger_index", "trigger_instances",
                "trigger_kwargs",
            ):
                self.connection.execute(f"DELETE FROM {table} WHERE uid = ?", (self.uid,))
        self.invalidate_cache()

    @classmethod
    def purge(cls, older_than: float, path: str | None = None, **options: Any) -> int:
        """Delete sessions not modified for ``older_than`` seconds; returns how many."""
        cutoff = time.time() - older_than
        storage = cls("-", path=path)
        uids = [r[0] for r in storage.connection.execute(
            "SELECT uid FROM trigger_sessions WHERE modified < ?", (cutoff,)
        )]
        for uid in uids:
            cls(uid, path=path).delete_session()
        return len(uids)
