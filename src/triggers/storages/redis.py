"""Redis storage: the distributed backend.

Each session lives in a fixed set of Redis hashes sharing the hash tag
``{uid}`` (so they sit in one cluster slot)::

    {prefix}:{uid}:meta          version, epoch, created, modified, commit (last commit token)
    {prefix}:{uid}:tasks         task name -> configuration JSON
    {prefix}:{uid}:tasktriggers  task name -> JSON list of the triggers it uses
    {prefix}:{uid}:index         trigger -> JSON list of the tasks using it
    {prefix}:{uid}:instances     instance name -> instance JSON
    {prefix}:{uid}:unstarted     task name -> JSON list of its unstarted instances
    {prefix}:{uid}:kwargs        trigger -> latest kwargs JSON
    {prefix}:{uid}:counters      task name -> number of instances ever created
    {prefix}:{uid}:versions      task name -> version of the last commit touching it

Atomic steps are optimistic and need no lock: a Lua script reads the slice a
step concerns (tasks using the triggers, their unstarted instances, the named
instances, counters, latest kwargs, and the versions of those tasks) in one
round trip, and a second Lua script writes the changes only if none of those
versions changed, bumping them; otherwise the step is retried (with a short
jittered back-off). Steps on disjoint tasks of one session do not conflict.
``save()`` (after ``acquire_lock()``) compares the whole-session version
instead. A step repeated by the same storage and thread while nobody else wrote
reuses its previous slice (one round trip; its commit then requires the whole
session to be unchanged). A process that dies mid-step leaves nothing behind:
its changes were either committed by one script call or never written.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from triggers.engine import SessionChanges, SessionSlice
from triggers.exceptions import StorageError, StorageUnavailableError
from triggers.storages.base import BaseTriggerStorage, SessionData, StepConflict
from triggers.storages.codec import decode_config, dumps, encode_config, encode_instance, loads
from triggers.types import STATUS_UNSTARTED, TaskConfig, TaskInstance, task_name_of

__all__ = [
    "RedisStorageBackend",
    "DEFAULT_REDIS_URL",
    "SESSION_KEYS",
    "safe_url",
]

R = TypeVar("R")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Suffixes of the keys holding one session, in the order the Lua scripts expect.
SESSION_KEYS = (
    "meta",
    "tasks",
    "tasktriggers",
    "index",
    "instances",
    "unstarted",
    "kwargs",
    "counters",
    "versions",
)

_SCHEMES = ("redis", "rediss", "unix")
#: Idle connections kept per process and server for the atomic-step scripts.
_MAX_IDLE = 32
_SECRET_QUERY_KEYS = frozenset({"password"})


def default_url() -> str:
    """``$TRIGGERS_REDIS_URL``, else ``redis://127.0.0.1:6379/0``."""
    return os.environ.get("TRIGGERS_REDIS_URL") or DEFAULT_REDIS_URL


def _split_secret(url: str) -> tuple[str, str | None]:
    """``url`` without its password (netloc or query), and that password."""
    parts = urlsplit(url)
    password: str | None = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        username, sep, secret = userinfo.partition(":")
        if sep and secret:
            password = unquote(secret)
        netloc = f"{username}@{hostport}" if username else hostport
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key in _SECRET_QUERY_KEYS for key, _ in pairs):
        kept = []
        for key, value in pairs:
            if key in _SECRET_QUERY_KEYS:
                password = password or value or None
            else:
                kept.append((key, value))
        query = urlencode(kept)
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text, password


def safe_url(url: str) -> str:
    """``url`` with any password removed (safe for task messages and logs)."""
    return _split_secret(url)[0]


def _endpoint(url: str) -> tuple[str, str | None, int | None, str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.scheme, parts.hostname, port, parts.path)


def _resolve_password(url: str, password: str | None) -> str | None:
    """The password to use for ``url``: its own, else the environment's.

    ``$TRIGGERS_REDIS_PASSWORD`` applies to any URL; a password inside
    ``$TRIGGERS_REDIS_URL`` applies to URLs of the same server and database.
    """
    if password is not None:
        return password
    from_env = os.environ.get("TRIGGERS_REDIS_PASSWORD")
    if from_env:
        return from_env
    env_url = os.environ.get("TRIGGERS_REDIS_URL")
    if env_url:
        env_safe, env_password = _split_secret(env_url)
        if env_password is not None and _endpoint(env_safe) == _endpoint(url):
            return env_password
    return None


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


@lru_cache(maxsize=1024)
def _command_head(sha: str, keys: tuple[str, ...]) -> bytes:
    """RESP for ``EVALSHA sha numkeys key...`` (the payload argument follows)."""
    parts = [b"*%d\r\n" % (4 + len(keys)), _bulk("EVALSHA"), _bulk(sha), _bulk(str(len(keys)))]
    return b"".join(parts + [_bulk(key) for key in keys])


_pack_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _pack(value: Any) -> str:
    """One JSON script argument (UTF-8 kept as is; Lua's cjson reads it)."""
    return _pack_encoder.encode(value)


def _lua(name: str) -> str:
    return (resources.files("triggers.storages") / "lua" / name).read_text(encoding="utf-8")


class StepVersion:
    """What an atomic step read, as the slice's opaque ``version``.

    Holds the session version and epoch it reflects, the version of every task
    it read (flat ``[task, version, ...]``), and the records it was built from
    (JSON texts), so that after a commit the same slice can be brought up to
    date without reading it again (see :meth:`RedisStorageBackend._read_slice`).
    ``reused`` marks a slice rebuilt that way: its commit then requires the
    whole session to be unchanged.
    """

    __slots__ = (
        "key",
        "session",
        "epoch",
        "tasks",
        "reused",
        "firing",
        "configs",
        "counters",
        "instances",
        "latest",
        "used",
    )

    def __init__(
        self,
        key: tuple[frozenset[str], frozenset[str]],
        session: int,
        epoch: str,
        tasks: list[str],
        firing: frozenset[str],
        configs: dict[str, TaskConfig],
        counters: dict[str, int],
        instances: dict[str, str],
        latest: dict[str, str],
        reused: bool = False,
    ) -> None:
        self.key = key
        self.session = session
        self.epoch = epoch
        self.tasks = tasks
        self.firing = firing
        self.configs = configs
        self.counters = counters
        self.instances = instances  # instance name -> JSON text (any task; see slice())
        self.latest = latest  # trigger -> JSON text (triggers of the firing tasks only)
        self.used: frozenset[str] = frozenset().union(
            *(configs[t].triggers for t in firing if t in configs)
        )
        self.reused = reused

    def slice(self) -> SessionSlice:
        """A fresh :class:`SessionSlice` (new objects: the step may change them)."""
        configs = self.configs
        instances: dict[str, TaskInstance] = {}
        for text in self.instances.values():
            data = loads(text)
            config = configs.get(data["task"])
            if config is not None:
                instances[data["name"]] = TaskInstance.from_dict(data, config)
        return SessionSlice(
            tasks=dict(configs),
            instances=instances,
            latest_kwargs={t: loads(k) for t, k in self.latest.items()},
            counters=dict(self.counters),
            version=self,
        )

    def after(self, version: int, changes: SessionChanges, records: dict[str, str]) -> StepVersion:
        """This read as it stands after committing ``changes`` (nobody else wrote)."""
        named = self.key[1]
        instances = dict(self.instances)
        for name, instance in changes.instances.items():
            if name in named or (
                instance.status == STATUS_UNSTARTED and instance.config.name in self.firing
            ):
                instances[name] = records[name]
            else:
                instances.pop(name, None)
        counters = dict(self.counters)
        counters.update((t, n) for t, n in changes.counters.items() if t in counters)
        latest = dict(self.latest)
        latest.update((t, dumps(k)) for t, k in changes.latest_kwargs.items() if t in self.used)
        return StepVersion(
            self.key,
            version,
            self.epoch,
            [],
            self.firing,
            self.configs,
            counters,
            instances,
            latest,
            reused=True,
        )

    def __repr__(self) -> str:
        return (
            f"StepVersion(session={self.session}, epoch={self.epoch}, tasks={self.tasks}, "
            f"reused={self.reused})"
        )


class _Connection:
    """One connection pool and its registered scripts (per process and server)."""

    def __init__(
        self, url: str, password: str | None, connect_timeout: float, socket_timeout: float
    ) -> None:
        self.pool = redis.ConnectionPool.from_url(
            url,
            password=password,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            # No silent retries: a retried commit could run twice. Errors are
            # handled (and read-only calls retried once) by the storage.
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.read_slice: Script = self.client.register_script(_lua("read_slice.lua"))
        self.commit: Script = self.client.register_script(_lua("commit_changes.lua"))
        self.purge: Script = self.client.register_script(_lua("purge_session.lua"))

        # Idle connections for the hot path (run()), used last-in first-out.
        self._idle: list[redis.Connection] = []

    def run(self, script: Script, keys: tuple[str, ...], payload: str) -> Any:
        """Run ``script`` with one argument, straight on a connection of our own.

        The hot path: skips redis-py's per-command and pool machinery (and its
        retries); loads the script when the server does not know it (e.g. after
        a restart). A connection that failed mid-command is closed, never reused.
        """
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self.pool.connection_class(**self.pool.connection_kwargs)
        data = payload.encode()
        # One buffer, so one send(): a second one would wake the server twice.
        command = [b"%b$%d\r\n%b\r\n" % (_command_head(script.sha, keys), len(data), data)]
        try:
            try:
                connection.send_packed_command(command)
                reply = connection.read_response()
            except redis.exceptions.NoScriptError:
                connection.send_command("SCRIPT", "LOAD", script.script)
                connection.read_response()
                connection.send_packed_command(command)
                reply = connection.read_response()
        except redis.ResponseError:
            self._release(connection)
            raise
        except BaseException:
            connection.disconnect()
            raise
        self._release(connection)
        return reply

    def _release(self, connection: redis.Connection) -> None:
        if len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.disconnect()

    def reset(self) -> None:
        """Close idle connections (they may be dead, e.g. after a server restart)."""
        while self._idle:
            try:
                self._idle.pop().disconnect()
            except IndexError:
                break
        self.pool.disconnect(inuse_connections=False)


_connections: dict[tuple[Any, ...], _Connection] = {}
_connections_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child starts with a fresh lock and none of its parent's connections."""
    global _connections_lock
    _connections_lock = threading.Lock()
    _connections.clear()  # the parent's sockets are the parent's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _connection(
    url: str, password: str | None, connect_timeout: float, socket_timeout: float
) -> _Connection:
    """The shared pool for this process and server (a forked child makes its own)."""
    key = (os.getpid(), url, password, connect_timeout, socket_timeout)
    conn = _connections.get(key)
    if conn is None:
        with _connections_lock:
            conn = _connections.get(key)
            if conn is None:
                conn = _Connection(url, password, connect_timeout, socket_timeout)
                _connections[key] = conn
    return conn


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"Redis URL must be a non-empty string, got {url!r}")
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(
            f"Redis URL {safe_url(url)!r} has scheme {scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}"
        )
    return url


def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"Redis key prefix must be a non-empty string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"Redis key prefix {prefix!r} must not contain '{{' or '}}' "
            "(the session uid is the key's hash tag)"
        )
    return prefix


def _check_seconds(name: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        expected = "a positive number of seconds" + (" or None" if allow_none else "")
        raise ValueError(f"Redis storage option {name!r} must be {expected}, got {value!r}")
    return value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _session_keys(prefix: str, uid: str) -> list[str]:
    """The keys of one session, in :data:`SESSION_KEYS` order."""
    return [f"{prefix}:{{{uid}}}:{suffix}" for suffix in SESSION_KEYS]


class RedisStorageBackend(BaseTriggerStorage):
    """Sessions in Redis, safe across threads, processes and machines.

    :param uid: the session uid.
    :param url: ``redis://[user[:password]@]host[:port][/db]``, ``rediss://``
        (TLS) or ``unix://`` URL (default ``$TRIGGERS_REDIS_URL``, else
        ``redis://127.0.0.1:6379/0``). Without a password in the URL,
        ``$TRIGGERS_REDIS_PASSWORD`` (or the password of ``$TRIGGERS_REDIS_URL``
        when it names the same server) is used.
    :param prefix: first part of every key (no braces).
    :param ttl: seconds after the last write at which the session expires
        (refreshed by every write); ``None`` keeps sessions until deleted.
    :param connect_timeout: seconds to wait for a connection.
    :param socket_timeout: seconds to wait for a reply.

    An unreachable server raises :class:`StorageUnavailableError` within about
    ``connect_timeout`` (or ``socket_timeout`` when it stops answering).
    Passwords never appear in :meth:`options` or in error messages.
    """

    def __init__(
        self,
        uid: str,
        url: str | None = None,
        prefix: str = "triggers",
        ttl: int | None = None,
        connect_timeout: float = 3.0,
        socket_timeout: float = 5.0,
    ) -> None:
        super().__init__(uid)
        full_url = _check_url(url if url is not None else default_url())
        self.prefix = _check_prefix(prefix)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise ValueError(
                f"Redis storage option 'ttl' must be a positive whole number of seconds "
                f"or None, got {ttl!r}"
            )
        self.ttl = ttl
        self.connect_timeout = float(_check_seconds("connect_timeout", connect_timeout))
        self.socket_timeout = float(_check_seconds("socket_timeout", socket_timeout))
        self.url, password = _split_secret(full_url)
        self._password = _resolve_password(self.url, password)
        self._keys = tuple(_session_keys(self.prefix, uid))
        # Per thread: conflicts in a row (back-off), and the slice kept from the
        # last step (``kept``), valid only while the session is at its version.
        self._local_state = threading.local()

    def options(self) -> dict[str, Any]:
        """Non-secret options (the URL without its password)."""
        return {
            "url": self.url,
            "prefix": self.prefix,
            "ttl": self.ttl,
            "connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} uid={self.uid!r} url={self.url!r} prefix={self.prefix!r}>"

    # --- connection and errors ------------------------------------------------
    @property
    def _conn(self) -> _Connection:
        return _connection(self.url, self._password, self.connect_timeout, self.socket_timeout)

    @property
    def client(self) -> redis.Redis:
        """The shared redis-py client of this storage (for inspection and tests)."""
        return self._conn.client

    @property
    def keys(self) -> list[str]:
        """The Redis keys holding this session, in :data:`SESSION_KEYS` order."""
        return list(self._keys)

    def _failure(self, action: str, exc: Exception) -> StorageError:
        where = f"session {self.uid!r}: {action} on Redis at {self.url!r}"
        return _failure(where, exc)

    def _call(self, action: str, fn: Callable[[], R]) -> R:
        """Run a read-only call; retry once on a fresh connection if one dropped."""
        return _read_only(self._conn, lambda exc: self._failure(action, exc), fn)

    # --- reads ---------------------------------------------------------------
    def _read_slice(self, triggers: frozenset[str], instance_names: frozenset[str]) -> SessionSlice:
        """The step's slice, in one round trip, or none at all when possible.

        When this thread's previous step had the same triggers and instance
        names, and its commit was the last write to the session, the slice is
        that step's slice brought up to date locally; its commit then checks
        that the session is still at that version (so a stale slice can never
        be committed: the step is retried from a real read).
        """
        key = (triggers, instance_names)
        kept: StepVersion | None = getattr(self._local_state, "kept", None)
        if kept is not None and kept.key == key:
            return kept.slice()
        wanted = sorted({task_name_of(n) for n in instance_names})
        request = _pack([sorted(triggers), wanted, sorted(instance_names)])
        conn = self._conn
        reply = loads(
            self._call("reading a step", lambda: conn.run(conn.read_slice, self._keys, request))
        )
        session_version, epoch = int(reply[0]), reply[1]
        pos = 3 + int(reply[2])
        firing = frozenset(reply[3:pos])
        count = int(reply[pos])
        pos += 1
        configs: dict[str, TaskConfig] = {}
        counters: dict[str, int] = {}
        for i in range(pos, pos + 3 * count, 3):
            name = reply[i]
            configs[name] = decode_config(name, reply[i + 1])
            counters[name] = int(reply[i + 2])
        pos += 3 * count
        count = int(reply[pos])
        pos += 1
        task_versions = reply[pos : pos + 2 * count]
        pos += 2 * count
        count = int(reply[pos])
        pos += 1
        instances = {reply[i]: reply[i + 1] for i in range(pos, pos + 2 * count, 2)}
        pos += 2 * count
        count = int(reply[pos])
        pos += 1
        latest = {reply[i]: reply[i + 1] for i in range(pos, pos + 2 * count, 2)}
        read = StepVersion(
            key,
            session_version,
            epoch,
            task_versions,
            firing,
            configs,
            counters,
            instances,
            latest,
        )
        read.latest = {t: k for t, k in latest.items() if t in read.used}
        return read.slice()

    def _read_session(self) -> SessionData:
        meta, tasks, _, _, instances, _, kwargs, counters, _ = self._keys
        client = self._conn.client

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hget(meta, "version")
            pipe.hgetall(tasks)
            pipe.hgetall(instances)
            pipe.hgetall(kwargs)
            pipe.hgetall(counters)
            return pipe.execute()

        version, task_map, instance_map, kwargs_map, counter_map = self._call(
            "reading the session", read
        )
        return SessionData(
            tasks={n: loads(t) for n, t in task_map.items()},
            instances={n: loads(i) for n, i in instance_map.items()},
            latest_kwargs={t: loads(k) for t, k in kwargs_map.items()},
            counters={t: int(c) for t, c in counter_map.items()},
            version=int(version or 0),
        )

    # --- writes --------------------------------------------------------------
    def _write_changes(self, slice_: SessionSlice, changes: SessionChanges) -> None:
        """Commit ``changes`` if what ``slice_`` was read from is unchanged.

        A slice read by :meth:`_read_slice` carries a :class:`StepVersion`: the
        commit checks only the versions of the tasks it read (steps on other
        tasks of the session do not conflict with it), or, for a slice rebuilt
        from the previous step, that the whole session is unchanged. Any other
        version (from :meth:`_read_session`, as ``save()`` passes it) is a
        session version: nothing at all may have changed in the session.

        Raises :class:`StepConflict` (after a short random pause) on a conflict;
        :class:`StorageUnavailableError` when Redis cannot be reached (the
        message says whether the commit may have landed).
        """
        state = self._local_state
        state.kept = None  # whatever happens, the kept slice is used up
        token = os.urandom(8).hex()
        seen = slice_.version
        check: list[Any]
        if isinstance(seen, StepVersion):
            if seen.reused:
                check = ["session", str(seen.session), False, sorted(seen.configs)]
            else:
                check = ["tasks", seen.epoch, seen.tasks]
        else:
            check = ["session", str(seen or 0), True, []]
        args: list[Any] = [
            check,
            "" if self.ttl is None else str(self.ttl),
            token,
            len(changes.tasks),
        ]
        for name, config in changes.tasks.items():
            args += [name, encode_config(config), dumps(sorted(config.triggers))]
        args.append(len(changes.instances))
        records: dict[str, str] = {}
        for name, instance in changes.instances.items():
            records[name] = text = encode_instance(instance)
            args += [name, instance.config.name, instance.status, text]
        args.append(len(changes.latest_kwargs))
        for trigger, kwargs in changes.latest_kwargs.items():
            args += [trigger, dumps(kwargs)]
        args.append(len(changes.counters))
        for task, counter in changes.counters.items():
            args += [task, str(counter)]

        conn = self._conn
        try:
            reply = conn.run(conn.commit, self._keys, _pack(args))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            reply = self._committed_version(token, exc) + " ?"
        except redis.RedisError as exc:
            raise self._failure("committing a step", exc) from exc
        if reply is None:
            if not (isinstance(seen, StepVersion) and seen.reused):
                self._pause_after_conflict()
            raise StepConflict(f"session {self.uid!r} changed since the step read it")
        state.conflicts = 0
        new_version, previous = reply.split(" ")
        if isinstance(seen, StepVersion) and not changes.tasks and previous == str(seen.session):
            # Nobody else wrote in between: keep the slice for a repeat of this step.
            state.kept = seen.after(int(new_version), changes, records)
        locked = self._locked
        if locked is not None and locked.version == seen:
            locked.version = int(new_version)  # a later save() in the same lock compares to it

    def _committed_version(self, token: str, exc: Exception) -> str:
        """After a lost reply: the new version if our commit landed, else raise."""
        meta = self._keys[0]
        client = self._conn.client
        try:
            committed, version = self._call(
                "checking a commit", lambda: client.hmget(meta, "commit", "version")
            )
        except StorageError:
            raise self._failure(
                "committing a step (the commit may or may not have been applied)", exc
            ) from exc
        if committed == token:
            return str(version)
        raise self._failure("committing a step (it was not applied)", exc) from exc

    def _pause_after_conflict(self) -> None:
        """Jittered exponential pause so competing steps stop colliding."""
        conflicts = getattr(self._local_state, "conflicts", 0) + 1
        self._local_state.conflicts = conflicts
        time.sleep(random.uniform(0, min(0.05, 0.0002 * 2 ** min(conflicts, 10))))

    # --- lifecycle -------------------------------------------------------------
    def delete_session(self) -> None:
        """Remove every key of this session (one atomic ``DEL``)."""
        client = self._conn.client
        self._local_state.kept = None
        self._call("deleting the session", lambda: client.delete(*self._keys))
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        """Forget cached reads (the next step reads its slice from Redis)."""
        super().invalidate_cache()
        self._local_state.kept = None

    def ttl_remaining(self) -> int | None:
        """Seconds before this session expires (None: it does not expire or does not exist)."""
        client = self._conn.client
        seconds = self._call("reading the TTL", lambda: client.ttl(self._keys[0]))
        return int(seconds) if seconds is not None and seconds >= 0 else None

    @classmethod
    def list_sessions(
        cls,
        url: str | None = None,
        prefix: str = "triggers",
        connect_timeout: float = 3.0,
        socket_timeout: float = 5.0,
        **options: Any,
    ) -> list[str]:
        """Uids of every session under ``prefix`` (sorted; found with ``SCAN``)."""
        conn, where = _lifecycle_connection(url, prefix, connect_timeout, socket_timeout)
        head, tail = f"{prefix}:{{", "}:meta"
        pattern = _glob_escape(head) + "*" + _glob_escape(tail)

        def scan() -> list[str]:
            found = {
                key[len(head) : -len(tail)]
                for key in conn.client.scan_iter(match=pattern, count=1000)
                if key.startswith(head) and key.endswith(tail)
            }
            return sorted(found)

        return _read_only(conn, lambda exc: _failure(f"listing sessions on {where}", exc), scan)

    @classmethod
    def purge(
        cls,
        older_than: float,
        url: str | None = None,
        prefix: str = "triggers",
        connect_timeout: float = 3.0,
        socket_timeout: float = 5.0,
        **options: Any,
    ) -> int:
        """Delete sessions not modified for ``older_than`` seconds; returns how many.

        Ages are measured with the Redis server's clock. Each session is checked
        and deleted atomically, so a session written meanwhile is kept.
        """
        if (
            isinstance(older_than, bool)
            or not isinstance(older_than, (int, float))
            or (older_than < 0)
        ):
            raise ValueError(
                f"purge: older_than must be a number of seconds >= 0, got {older_than!r}"
            )
        conn, where = _lifecycle_connection(url, prefix, connect_timeout, socket_timeout)
        uids = cls.list_sessions(
            url=url, prefix=prefix, connect_timeout=connect_timeout, socket_timeout=socket_timeout
        )

        def purge_batch(batch: Sequence[str]) -> int:
            pipe = conn.client.pipeline(transaction=False)
            for uid in batch:
                conn.purge(keys=_session_keys(prefix, uid), args=[older_than], client=pipe)
            return sum(int(n) for n in pipe.execute())

        deleted = 0
        for start in range(0, len(uids), 500):
            batch = uids[start : start + 500]
            try:
                deleted += purge_batch(batch)
            except redis.RedisError as exc:
                raise _failure(f"purging sessions on {where}", exc) from exc
        return deleted


def _lifecycle_connection(
    url: str | None, prefix: str, connect_timeout: float, socket_timeout: float
) -> tuple[_Connection, str]:
    full = _check_url(url if url is not None else default_url())
    _check_prefix(prefix)
    plain, password = _split_secret(full)
    conn = _connection(
        plain,
        _resolve_password(plain, password),
        float(_check_seconds("connect_timeout", connect_timeout)),
        float(_check_seconds("socket_timeout", socket_timeout)),
    )
    return conn, f"Redis at {plain!r} (prefix {prefix!r})"


def _failure(where: str, exc: Exception) -> StorageError:
    """A library error for a redis-py error (messages never include passwords)."""
    if isinstance(exc, redis.AuthenticationError):
        return StorageUnavailableError(f"{where}: authentication failed ({exc})")
    if isinstance(exc, redis.TimeoutError):
        return StorageUnavailableError(f"{where}: Redis did not answer in time ({exc})")
    if isinstance(exc, redis.ConnectionError):
        return StorageUnavailableError(f"{where}: Redis is unreachable ({exc})")
    return StorageError(f"{where}: {type(exc).__name__}: {exc}")


def _read_only(
    conn: _Connection, failure: Callable[[Exception], StorageError], fn: Callable[[], R]
) -> R:
    """Run a read-only call; after a dropped connection, retry once on a fresh one."""
    try:
        return fn()
    except redis.AuthenticationError as exc:
        raise failure(exc) from exc
    except redis.TimeoutError as exc:
        raise failure(exc) from exc
    except redis.ConnectionError:
        # Idle connections may be dead (e.g. the server restarted).
        conn.reset()
    except redis.RedisError as exc:
        raise failure(exc) from exc
    try:
        return fn()
    except redis.RedisError as exc:
        raise failure(exc) from exc
