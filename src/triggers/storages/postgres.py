"""PostgreSQL storage: the distributed, transactional backend.

Every session lives in five tables (sessions, tasks, trigger index, instances,
latest kwargs) with JSONB records. Each atomic step is one transaction on a
pooled connection that first takes a transaction-scoped advisory lock on the
session (``pg_advisory_xact_lock``), so steps on one session serialize across
every process and machine while different sessions run in parallel. PostgreSQL
releases the lock when the transaction ends, including when the client dies and
its connection drops, so a crashed process never leaves a session locked.

A step costs two network round trips: ``BEGIN`` + settings + lock + the slice
read travel as one multi-statement string, then every write + ``COMMIT`` as a
second one; the statements are prepared once per connection (``PREPARE``) and
run with ``EXECUTE``. A fire reads only the tasks using the trigger, their
unstarted instances, the named instances and the latest kwargs of those tasks'
triggers, each through a key.

Passwords never leave the process: :meth:`PostgresStorageBackend.options` (what
task messages carry) and every error message use the DSN without its password;
a worker gets the password from its own ``TRIGGERS_POSTGRES_DSN`` or
``PGPASSWORD`` (or ``~/.pgpass``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from triggers.engine import SessionChanges, SessionSlice, Step
from triggers.exceptions import StorageError, StorageUnavailableError
from triggers.storages.base import BaseTriggerStorage, SessionData
from triggers.storages.codec import decode_config, dumps, encode_instance
from triggers.types import STATUS_UNSTARTED, TaskConfig, TaskInstance, task_name_of

__all__ = ["PostgresStorageBackend", "DSN_ENV", "TABLES"]

R = TypeVar("R")

#: Environment variable holding the default DSN (and, on workers, the password).
DSN_ENV = "TRIGGERS_POSTGRES_DSN"

#: The tables of one schema, in the order they are created.
TABLES = (
    "trigger_sessions",
    "trigger_tasks",
    "trigger_index",
    "trigger_instances",
    "trigger_kwargs",
)

#: The indexes besides the primary keys.
INDEXES = ("trigger_index_by_task", "trigger_instances_unstarted")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: SQLSTATEs after which a step is retried from scratch (nothing was committed).
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def _literal(value: str) -> str:
    """``value`` as an SQL string literal (an ``E''`` string: independent of
    ``standard_conforming_strings``). Steps send their parameters as literals in
    one multi-statement string, which is what makes a step two round trips."""
    if "\x00" in value:
        raise ValueError(f"PostgreSQL text cannot contain the NUL character: {value!r}")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _text_array(values: Iterable[str]) -> str:
    """``values`` as a ``text[]`` literal (every element quoted, so none is NULL)."""
    inner = ",".join(
        '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
    )
    return _literal("{" + inner + "}")


def _ddl(schema: str) -> str:
    s = f'"{schema}"'
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.trigger_sessions (
    uid text PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    modified timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.trigger_tasks (
    uid text NOT NULL,
    name text NOT NULL,
    config jsonb NOT NULL,
    counter integer NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, name)
);
CREATE TABLE IF NOT EXISTS {s}.trigger_index (
    uid text NOT NULL,
    trigger text NOT NULL,
    task text NOT NULL,
    PRIMARY KEY (uid, trigger, task)
);
CREATE INDEX IF NOT EXISTS trigger_index_by_task
    ON {s}.trigger_index (uid, task);
CREATE TABLE IF NOT EXISTS {s}.trigger_instances (
    uid text NOT NULL,
    name text NOT NULL,
    task text NOT NULL,
    status text NOT NULL,
    data jsonb NOT NULL,
    PRIMARY KEY (uid, name)
);
CREATE INDEX IF NOT EXISTS trigger_instances_unstarted
    ON {s}.trigger_instances (uid, task, status) WHERE status = '{STATUS_UNSTARTED}';
CREATE TABLE IF NOT EXISTS {s}.trigger_kwargs (
    uid text NOT NULL,
    trigger text NOT NULL,
    kwargs jsonb NOT NULL,
    PRIMARY KEY (uid, trigger)
);
"""


class _Queries:
    """The SQL of one schema (identifiers validated, then quoted).

    The statements a step runs are server-side prepared once per connection
    (``PREPARE``) and run with ``EXECUTE`` inside multi-statement strings, so a
    step costs two round trips without re-planning its queries.
    """

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.schema = schema
        self.ddl = _ddl(schema)
        self.lock_namespace = f"triggers:{schema}"
        tag = hashlib.sha1(schema.encode()).hexdigest()[:10]
        self.prefix = f"triggers_{tag}_"
        self.lock = "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))"
        # name -> (parameter types, body with $n placeholders)
        self.statements: dict[str, tuple[str, str]] = {}
        # The slice of a step, in at most two statements. Rows are (kind, name, text,
        # counter): kind 0 a task using a fired trigger, 3 the task of a named
        # instance, 1 an instance, 2 the latest kwargs of a trigger. Every lookup
        # starts from a small array of names and goes through an index with all its
        # columns given (LATERAL ... OFFSET 0 keeps the planner from turning it into
        # a scan of the session, whatever the statistics say), so a step costs what
        # it touches, not the size of the session.
        # $1 uid, $2 triggers.
        self._prepare("read_fire", "text, text[]", f"""
WITH firing AS MATERIALIZED (
    SELECT DISTINCT x.task
      FROM unnest($2) AS f(trigger),
           LATERAL (SELECT task FROM {s}.trigger_index
                     WHERE uid = $1 AND trigger = f.trigger OFFSET 0) x
), used AS MATERIALIZED (
    SELECT DISTINCT x.trigger
      FROM firing f,
           LATERAL (SELECT trigger FROM {s}.trigger_index
                     WHERE uid = $1 AND task = f.task OFFSET 0) x
)
SELECT 0, t.name, t.config::text, t.counter
  FROM firing f,
       LATERAL (SELECT name, config, counter FROM {s}.trigger_tasks
                 WHERE uid = $1 AND name = f.task OFFSET 0) t
UNION ALL
SELECT 1, i.name, i.data::text, NULL
  FROM firing f,
       LATERAL (SELECT name, data FROM {s}.trigger_instances
                 WHERE uid = $1 AND task = f.task AND status = '{STATUS_UNSTARTED}'
                 OFFSET 0) i
UNION ALL
SELECT 2, k.trigger, k.kwargs::text, NULL
  FROM used u,
       LATERAL (SELECT trigger, kwargs FROM {s}.trigger_kwargs
                 WHERE uid = $1 AND trigger = u.trigger OFFSET 0) k""")
        # $1 uid, $2 instance names, $3 their tasks.
        self._prepare("read_named", "text, text[], text[]", f"""
SELECT 3, t.name, t.config::text, t.counter
  FROM unnest($3) AS w(name),
       LATERAL (SELECT name, config, counter FROM {s}.trigger_tasks
                 WHERE uid = $1 AND name = w.name OFFSET 0) t
UNION ALL
SELECT 1, i.name, i.data::text, NULL
  FROM unnest($2) AS n(name),
       LATERAL (SELECT name, data FROM {s}.trigger_instances
                 WHERE uid = $1 AND name = n.name OFFSET 0) i""")
        self._prepare("read_session", "text", f"""
SELECT 0, name, config::text, counter FROM {s}.trigger_tasks WHERE uid = $1
UNION ALL
SELECT 1, name, data::text, NULL FROM {s}.trigger_instances WHERE uid = $1
UNION ALL
SELECT 2, trigger, kwargs::text, NULL FROM {s}.trigger_kwargs WHERE uid = $1""")
        # $1 uid, $2 task names, $3 configs, $4 index triggers, $5 index tasks.
        self._prepare("write_tasks", "text, text[], text[], text[], text[]", f"""
WITH upsert AS (
    INSERT INTO {s}.trigger_tasks (uid, name, config)
    SELECT $1, x.name, x.config::jsonb FROM unnest($2, $3) AS x(name, config)
    ON CONFLICT (uid, name) DO UPDATE SET config = excluded.config
), stale AS (
    DELETE FROM {s}.trigger_index i
     WHERE i.uid = $1 AND i.task = ANY($2)
       AND (i.trigger, i.task) NOT IN (SELECT * FROM unnest($4, $5))
)
INSERT INTO {s}.trigger_index (uid, trigger, task)
SELECT $1, x.trigger, x.task FROM unnest($4, $5) AS x(trigger, task)
ON CONFLICT DO NOTHING""")
        # $1 uid, $2/$3 counters, $4..$7 instances, $8/$9 latest kwargs.
        self._prepare(
            "write",
            "text, text[], text[], text[], text[], text[], text[], text[], text[]",
            f"""
WITH session AS (
    INSERT INTO {s}.trigger_sessions (uid, created, modified) VALUES ($1, now(), now())
    ON CONFLICT (uid) DO UPDATE SET modified = excluded.modified
), counters AS (
    UPDATE {s}.trigger_tasks t SET counter = x.counter::integer
      FROM unnest($2, $3) AS x(name, counter)
     WHERE t.uid = $1 AND t.name = x.name
), instances AS (
    INSERT INTO {s}.trigger_instances (uid, name, task, status, data)
    SELECT $1, x.name, x.task, x.status, x.data::jsonb
      FROM unnest($4, $5, $6, $7) AS x(name, task, status, data)
    ON CONFLICT (uid, name) DO UPDATE
       SET task = excluded.task, status = excluded.status, data = excluded.data
)
INSERT INTO {s}.trigger_kwargs (uid, trigger, kwargs)
SELECT $1, x.trigger, x.kwargs::jsonb FROM unnest($8, $9) AS x(trigger, kwargs)
ON CONFLICT (uid, trigger) DO UPDATE SET kwargs = excluded.kwargs""",
        )
        self.delete_session = f"""
WITH a AS (DELETE FROM {s}.trigger_tasks WHERE uid = %(uid)s),
     b AS (DELETE FROM {s}.trigger_index WHERE uid = %(uid)s),
     c AS (DELETE FROM {s}.trigger_instances WHERE uid = %(uid)s),
     d AS (DELETE FROM {s}.trigger_kwargs WHERE uid = %(uid)s)
DELETE FROM {s}.trigger_sessions WHERE uid = %(uid)s"""
        self.list_sessions = f"SELECT uid FROM {s}.trigger_sessions ORDER BY uid"
        self.lock_old_sessions = (
            f"SELECT uid FROM {s}.trigger_sessions "
            "WHERE modified < now() - make_interval(secs => %s) "
            "AND pg_try_advisory_xact_lock(hashtext(%s), hashtext(uid)) ORDER BY uid LIMIT %s"
        )
        self.delete_old_sessions = f"""
WITH old AS (
    DELETE FROM {s}.trigger_sessions
     WHERE uid = ANY(%(uids)s) AND modified < now() - make_interval(secs => %(age)s)
    RETURNING uid),
     a AS (DELETE FROM {s}.trigger_tasks WHERE uid IN (SELECT uid FROM old)),
     b AS (DELETE FROM {s}.trigger_index WHERE uid IN (SELECT uid FROM old)),
     c AS (DELETE FROM {s}.trigger_instances WHERE uid IN (SELECT uid FROM old)),
     d AS (DELETE FROM {s}.trigger_kwargs WHERE uid IN (SELECT uid FROM old))
SELECT count(*) FROM old"""

    def _prepare(self, key: str, types: str, body: str) -> None:
        self.statements[self.prefix + key] = (types, body)

    def name(self, key: str) -> str:
        return self.prefix + key

    def prepare_sql(self, names: list[str]) -> str:
        return "; ".join(
            f"PREPARE {n} ({self.statements[n][0]}) AS {self.statements[n][1]}" for n in names
        )


# ----------------------------------------------------------------------------
# DSNs and passwords
# ----------------------------------------------------------------------------
def default_dsn() -> str:
    """``$TRIGGERS_POSTGRES_DSN``, or ``""`` (libpq defaults: ``PGHOST``, ``PGUSER``...)."""
    return os.environ.get(DSN_ENV, "")


def _parse_dsn(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message may quote parts of the DSN (the password among them).
        raise ValueError(
            "invalid PostgreSQL DSN: expected a URI like "
            "'postgresql://user@host:5432/dbname' or 'key=value' pairs "
            "(the DSN is not shown because it may contain a password)"
        ) from None


def strip_password(dsn: str) -> str:
    """``dsn`` without its password (URI user info, ``password`` query or key)."""
    if re.match(r"^postgres(ql)?://", dsn):
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}@{hosts}"
        query = urlencode(
            [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    params = _parse_dsn(dsn)
    params.pop("password", None)
    return make_conninfo("", **params)


def _describe(params: Mapping[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    return f"{host}:{port}/{dbname}"


def _identity(params: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")),
        str(params.get("port") or os.environ.get("PGPORT", "5432")),
        str(params.get("dbname") or os.environ.get("PGDATABASE", "")),
        str(params.get("user") or os.environ.get("PGUSER", "")),
    )


def _password_for(params: Mapping[str, Any]) -> str | None:
    """The password for ``params``: its own, else ``$TRIGGERS_POSTGRES_DSN``'s for the same server.

    Returning None lets libpq use ``PGPASSWORD`` or ``~/.pgpass``.
    """
    if params.get("password"):
        return str(params["password"])
    env = os.environ.get(DSN_ENV)
    if not env:
        return None
    try:
        env_params = _parse_dsn(env)
    except ValueError:
        return None
    if env_params.get("password") and _identity(env_params) == _identity(params):
        return str(env_params["password"])
    return None


# ----------------------------------------------------------------------------
# Connection pools: one per (process, connection target); never shared across fork
# ----------------------------------------------------------------------------
class _Pool:
    """A psycopg pool plus what error reporting needs (no secret in its text)."""

    def __init__(self, conninfo: str, password: str | None, public: str, size: int,
                 connect_timeout: float) -> None:
        self.public = public
        self.password = password
        self.last_error: str | None = None
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, int(round(connect_timeout))),
        }
        given = _parse_dsn(conninfo)
        defaults: dict[str, Any] = {
            "application_name": "triggers",
            # A server that vanishes without closing the connection (network
            # partition, machine lost) is noticed within about 25 s instead of
            # the system's default of hours: no step waits forever.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        kwargs.update({k: v for k, v in defaults.items() if k not in given})
        if password is not None:
            kwargs["password"] = password
        pool_ref = self

        class _Connection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, conninfo: str = "", **kw: Any) -> Any:
                try:
                    conn = super().connect(conninfo, **kw)
                except Exception as exc:
                    pool_ref.last_error = pool_ref.scrub(str(exc).strip())
                    raise
                pool_ref.last_error = None
                return conn

        self.pool: ConnectionPool[Any] = ConnectionPool(
            conninfo,
            connection_class=_Connection,
            kwargs=kwargs,
            min_size=1,
            max_size=max(1, size),
            open=True,
            name=f"triggers-postgres-{public}",
            timeout=connect_timeout,
            reconnect_timeout=max(60.0, connect_timeout),
        )

    def scrub(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        return text


_pools: dict[tuple[int, str, str | None], _Pool] = {}
_pools_lock = threading.Lock()
_schema_ready: set[tuple[int, str, str | None, str]] = set()


def _close_own_pools(public_dsn: str | None = None) -> None:
    """Close the pools this process opened (inherited ones belong to the parent)."""
    pid = os.getpid()
    with _pools_lock:
        mine = [
            key for key in _pools
            if key[0] == pid and (public_dsn is None or key[1] == public_dsn)
        ]
        pools = [_pools.pop(key) for key in mine]
    for entry in pools:
        try:
            entry.pool.close(timeout=1.0)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


atexit.register(_close_own_pools)


class _Database:
    """Where one storage's sessions live: connection target, schema, timeouts."""

    def __init__(
        self,
        dsn: str | None,
        schema: str,
        connect_timeout: float,
        timeout: float,
        idle_timeout: float,
        pool_size: int,
        synchronous_commit: bool = True,
    ) -> None:
        if dsn is None:
            dsn = default_dsn()
        if not isinstance(dsn, str):
            raise ValueError(f"PostgreSQL DSN must be a string, got {type(dsn).__name__}")
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise ValueError(
                f"PostgreSQL schema must be an identifier (letters, digits, underscores, "
                f"not starting with a digit, at most 63 characters), got {schema!r}"
            )
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("timeout", timeout),
            ("idle_timeout", idle_timeout),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"PostgreSQL {name} must be a positive number of seconds, got {value!r}"
                )
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"PostgreSQL pool_size must be a positive integer, got {pool_size!r}")
        params = _parse_dsn(dsn)
        self.password = _password_for(params)
        self.public_dsn = strip_password(dsn)
        self.target = _describe(params)
        self.schema = schema
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.idle_timeout = float(idle_timeout)
        self.pool_size = pool_size
        self.sql = _Queries(schema)
        self.synchronous_commit = bool(synchronous_commit)
        # Settings local to each step's transaction (numbers we formatted: no quoting issue).
        settings = {
            "lock_timeout": f"{max(1, int(self.timeout * 1000))}ms",
            # Twice as long: a statement holding the lock never legitimately runs that
            # long, and a lock wait is reported as such rather than as a slow statement.
            "statement_timeout": f"{max(2, int(self.timeout * 2000))}ms",
            "idle_in_transaction_session_timeout": f"{max(1, int(self.idle_timeout * 1000))}ms",
            # Plans of the prepared statements do not depend on their parameters:
            # every read goes through a key. Sequential scans are never right for
            # them, whatever the statistics of small or bloated tables suggest.
            "plan_cache_mode": "force_generic_plan",
            "enable_seqscan": "off",
        }
        if not self.synchronous_commit:
            settings["synchronous_commit"] = "off"
        self.settings_sql = "SELECT " + ", ".join(
            f"set_config('{name}', '{value}', true)" for name, value in settings.items()
        )

    # --- pools --------------------------------------------------------------
    def pool(self) -> _Pool:
        key = (os.getpid(), self.public_dsn, self.password)
        entry = _pools.get(key)
        if entry is None:
            with _pools_lock:
                entry = _pools.get(key)
                if entry is None:
                    entry = _Pool(
                        self.public_dsn, self.password, self.target, self.pool_size,
                        self.connect_timeout,
                    )
                    _pools[key] = entry
        return entry

    def getconn(self, what: str) -> tuple[_Pool, psycopg.Connection[Any]]:
        """A pooled connection; :class:`StorageUnavailableError` within ``connect_timeout``."""
        entry = self.pool()
        try:
            return entry, entry.pool.getconn(timeout=self.connect_timeout)
        except PoolTimeout:
            stats = entry.pool.get_stats()
            if stats.get("pool_size", 0) and entry.last_error is None:
                reason = (
                    f"all {stats.get('pool_size')} pooled connections stayed busy "
                    f"(pool_size={self.pool_size})"
                )
            else:
                reason = entry.last_error or "no connection could be established"
            raise StorageUnavailableError(
                f"{what}: PostgreSQL at {self.target} is unavailable: no connection within "
                f"{self.connect_timeout:g}s ({reason})"
            ) from None

    def scrub(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        return text

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Make sure ``conn`` has this schema's statements prepared (once per connection)."""
        schemas = _prepared.get(conn)
        if schemas is not None and self.schema in schemas:
            return
        names = list(self.sql.statements)
        existing = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", (names,)
            ).fetchall()
        }
        missing = [n for n in names if n not in existing]
        if missing:
            conn.execute(self.sql.prepare_sql(missing).encode())
        with _prepared_lock:
            _prepared.setdefault(conn, set()).add(self.schema)

    # --- schema ---------------------------------------------------------------
    def create_schema(self, what: str = "") -> None:
        """Create the schema and tables if missing (idempotent, safe concurrently)."""
        what = f"{what}: " if what else ""

        objects = [f'"{self.schema}".{name}' for name in (*TABLES, *INDEXES)]

        def create(conn: psycopg.Connection[Any]) -> None:
            # When everything exists, do not even run the DDL: CREATE INDEX IF NOT
            # EXISTS would wait for (and hold up) concurrent writers.
            present = conn.execute(
                "SELECT count(to_regclass(o)) FROM unnest(%s::text[]) AS o", (objects,)
            ).fetchone()
            if present and present[0] == len(objects):
                return
            with conn.transaction():
                conn.execute(self.settings_sql)
                conn.execute(self.sql.lock, (self.sql.lock_namespace, "-schema-"))
                conn.execute(self.sql.ddl.encode())

        self.run(f"{what}creating the triggers schema {self.schema!r}", create, prepared=False)
        _schema_ready.add((os.getpid(), self.public_dsn, self.password, self.schema))

    def ensure_schema(self, what: str = "") -> None:
        """Run :meth:`create_schema` unless this process already did."""
        if (os.getpid(), self.public_dsn, self.password, self.schema) not in _schema_ready:
            self.create_schema(what)

    def run(
        self, what: str, fn: Callable[[psycopg.Connection[Any]], R], prepared: bool = True
    ) -> R:
        """Run ``fn`` on a pooled autocommit connection, translating errors.

        Retried on a fresh connection when the pooled one turns out to be dead.
        """
        attempts = 3
        for attempt in range(attempts):
            entry, conn = self.getconn(what)
            try:
                if prepared:
                    self.prepare(conn)
                return fn(conn)
            except psycopg.Error as exc:
                if (conn.broken or exc.sqlstate == "26000") and attempt < attempts - 1:
                    _forget_prepared(conn)
                    entry.pool.check()
                    continue
                raise _translate(self, exc, what) from None
            finally:
                if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        pass
                entry.pool.putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover


#: Connections -> schemas whose statements they have prepared.
_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
    weakref.WeakKeyDictionary()
)
_prepared_lock = threading.Lock()


def _forget_prepared(conn: psycopg.Connection[Any]) -> None:
    with _prepared_lock:
        _prepared.pop(conn, None)


class _Retry(StorageError):
    """A step failed in a way that guarantees nothing was committed; run it again."""


#: Statements in the prefix of a step (BEGIN, settings, lock): see ``_begin_sql``.
_PREFIX_STATEMENTS = 3


class _Tx:
    """One open step: its connection, the not-yet-sent BEGIN/lock, queued writes.

    ``BEGIN``, the timeouts and the session lock travel with the step's first
    read; the writes travel with ``COMMIT``: two round trips per step.
    """

    __slots__ = ("conn", "cur", "prefix", "sent", "writes", "committing")

    def __init__(self, conn: psycopg.Connection[Any], prefix: str) -> None:
        self.conn = conn
        self.cur: psycopg.ClientCursor[Any] = psycopg.ClientCursor(conn)
        self.prefix = prefix
        self.sent = False
        self.writes: list[str] = []
        self.committing = False

    def query(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run ``statements`` (after the BEGIN/lock prefix if not sent yet).

        Returns the rows of all of them, in order, in one round trip.
        """
        text = "; ".join(statements)
        if not self.sent:
            text = f"{self.prefix}; {text}"
            self.sent = True
            skip = _PREFIX_STATEMENTS
        else:
            skip = 0
        cur = self.cur
        cur.execute(text)
        for _ in range(skip):
            cur.nextset()
        rows = cur.fetchall()
        for _ in range(len(statements) - 1):
            cur.nextset()
            rows += cur.fetchall()
        return rows

    def commit(self) -> None:
        if self.writes:
            if not self.sent:
                # Make sure the lock is granted before COMMIT is on the wire, so a
                # dead connection shows up while retrying is still safe.
                self.cur.execute(self.prefix)
                self.sent = True
            self.committing = True
            self.cur.execute("; ".join([*self.writes, "COMMIT"]))
        elif self.sent:
            self.cur.execute("COMMIT")

    def abort(self) -> None:
        conn = self.conn
        if conn.broken or conn.closed:
            return
        if conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass


class _TxState(threading.local):
    current: _Tx | None = None


def _translate(db: _Database, exc: psycopg.Error, what: str) -> StorageError:
    """A clear :class:`StorageError` for ``exc`` (password scrubbed)."""
    detail = db.scrub(str(exc).strip()) or type(exc).__name__
    timeout = db.timeout
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StorageUnavailableError(
            f"{what}: waited more than {timeout:g}s for the session lock held by another "
            f"step (lock_timeout); nothing was written"
        )
    if isinstance(exc, pg_errors.QueryCanceled):
        return StorageError(
            f"{what}: a statement ran longer than {2 * timeout:g}s (statement_timeout) and was "
            f"cancelled; nothing was written"
        )
    if isinstance(exc, pg_errors.UntranslatableCharacter):
        return StorageError(
            f"{what}: PostgreSQL jsonb cannot store this value ({detail}); "
            "the NUL character \\u0000 is not allowed in stored kwargs or metadata; "
            "nothing was written"
        )
    broken = exc.sqlstate is None and isinstance(exc, psycopg.OperationalError)
    if broken or isinstance(exc, pg_errors.AdminShutdown):
        return StorageUnavailableError(f"{what}: PostgreSQL at {db.target} failed: {detail}")
    if exc.sqlstate is None:
        return StorageError(f"{what}: {detail}")
    return StorageError(f"{what}: PostgreSQL error {exc.sqlstate}: {detail}")


#: Options the class methods (create_schema, list_sessions, purge) accept besides dsn/schema.
_CLASS_OPTIONS = frozenset(
    {
        "connect_timeout", "timeout", "idle_timeout", "pool_size", "synchronous_commit",
        "auto_create_schema",
    }
)


class PostgresStorageBackend(BaseTriggerStorage):
    """Sessions in PostgreSQL, safe across threads, processes and machines.

    :param uid: the session uid.
    :param dsn: libpq connection string or URI (default ``$TRIGGERS_POSTGRES_DSN``,
        else libpq's own defaults ``PGHOST``/``PGUSER``/...). A password in it is
        used to connect but never appears in :meth:`options` or error messages.
    :param schema: PostgreSQL schema holding the tables (created if missing).
    :param connect_timeout: seconds to get a connection before
        :class:`StorageUnavailableError`.
    :param timeout: ``lock_timeout`` of every step, in seconds: a step never waits
        longer for another step's session lock (``statement_timeout`` is twice that).
    :param idle_timeout: ``idle_in_transaction_session_timeout``: the server ends a
        connection that holds a session (e.g. in ``acquire_lock()``) without
        talking to it for that long, so even a frozen process releases it.
    :param pool_size: most connections the per-process pool opens for this DSN.
    :param auto_create_schema: run :meth:`create_schema` once per process on
        first use (set False when the schema is managed by migrations).
    :param synchronous_commit: wait for each step's commit to reach disk (the
        default). ``False`` is faster, but a *server* crash may then lose the
        last steps that were reported committed (never corrupts a session).
    """

    #: Attempts for a step that failed without committing (deadlock, serialization
    #: failure, connection lost before COMMIT).
    max_transaction_attempts = 5

    def __init__(
        self,
        uid: str,
        dsn: str | None = None,
        schema: str = "public",
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        idle_timeout: float = 60.0,
        pool_size: int = 10,
        auto_create_schema: bool = True,
        synchronous_commit: bool = True,
    ) -> None:
        super().__init__(uid)
        self._db = _Database(
            dsn, schema, connect_timeout, timeout, idle_timeout, pool_size, synchronous_commit
        )
        self.auto_create_schema = bool(auto_create_schema)
        self._tx = _TxState()
        self._begin: str | None = None
        self._uid_sql: str | None = None

    def _uid_literal(self) -> str:
        if self._uid_sql is None:
            self._uid_sql = _literal(self.uid)
        return self._uid_sql

    # --- public description -------------------------------------------------
    @property
    def dsn(self) -> str:
        """The DSN without its password."""
        return self._db.public_dsn

    @property
    def schema(self) -> str:
        return self._db.schema

    def options(self) -> dict[str, Any]:
        """Non-secret options to rebuild this storage (the DSN has no password)."""
        db = self._db
        return {
            "dsn": db.public_dsn,
            "schema": db.schema,
            "connect_timeout": db.connect_timeout,
            "timeout": db.timeout,
            "idle_timeout": db.idle_timeout,
            "pool_size": db.pool_size,
            "auto_create_schema": self.auto_create_schema,
            "synchronous_commit": db.synchronous_commit,
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} uid={self.uid!r} at {self._db.target} "
            f"schema={self.schema!r}>"
        )

    # --- schema ----------------------------------------------------------------
    @classmethod
    def create_schema(cls, dsn: str | None = None, schema: str = "public", **options: Any) -> None:
        """Create the schema and its tables if they do not exist (idempotent).

        Safe to run concurrently from several processes. ``dsn`` defaults to
        ``$TRIGGERS_POSTGRES_DSN``; ``options`` are the constructor's
        (``connect_timeout``, ``timeout``...).
        """
        cls._database(dsn, schema, options).create_schema()

    @classmethod
    def _database(cls, dsn: str | None, schema: str, options: Mapping[str, Any]) -> _Database:
        unknown = sorted(set(options) - _CLASS_OPTIONS)
        if unknown:
            raise TypeError(
                f"unexpected PostgreSQL storage option(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(_CLASS_OPTIONS))}"
            )
        return _Database(
            dsn,
            schema,
            options.get("connect_timeout", 5.0),
            options.get("timeout", 30.0),
            options.get("idle_timeout", 60.0),
            options.get("pool_size", 10),
            options.get("synchronous_commit", True),
        )

    @classmethod
    def close_pools(cls, dsn: str | None = None) -> None:
        """Close this process's connection pools, or only those for ``dsn``.

        They reopen on next use. Pools inherited through ``fork()`` are never
        touched: their connections belong to the parent process.
        """
        _close_own_pools(None if dsn is None else strip_password(dsn))

    # --- the atomic step ---------------------------------------------------------
    def run_step(
        self,
        plan: Callable[[Step], R],
        triggers: Iterable[str] = (),
        instance_names: Iterable[str] = (),
    ) -> tuple[R, Step]:
        """Run ``plan`` in one transaction holding the session lock (see the base class).

        A step that failed before its COMMIT was sent (deadlock, serialization
        failure, connection lost) is retried from scratch, at most
        :attr:`max_transaction_attempts` times; ``plan`` must be pure.
        """
        last: _Retry | None = None
        for attempt in range(self.max_transaction_attempts):
            try:
                return super().run_step(plan, triggers, instance_names)
            except _Retry as exc:
                last = exc
                time.sleep(min(0.5, 0.01 * 2**attempt))
        raise StorageUnavailableError(
            f"session {self.uid!r}: gave up after {self.max_transaction_attempts} attempts; "
            f"nothing was written ({last})"
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        local = self._tx
        if local.current is not None:  # nested (e.g. delete_session() inside acquire_lock())
            yield
            return
        db = self._db
        what = f"session {self.uid!r}"
        if self.auto_create_schema:
            db.ensure_schema(what)
        entry, conn = db.getconn(what)
        tx: _Tx | None = None
        try:
            try:
                db.prepare(conn)
            except psycopg.Error as exc:
                raise self._failure(entry, conn, exc, committing=False) from None
            tx = local.current = _Tx(conn, self._begin_sql())
            try:
                yield
                tx.commit()
            except psycopg.Error as exc:
                tx.abort()
                raise self._failure(entry, conn, exc, tx.committing) from None
            except BaseException:
                tx.abort()
                raise
        finally:
            local.current = None
            entry.pool.putconn(conn)

    def _begin_sql(self) -> str:
        """``BEGIN``, the step's settings and the session lock: three statements."""
        if self._begin is None:
            db = self._db
            self._begin = (
                f"BEGIN; {db.settings_sql}; SELECT pg_advisory_xact_lock("
                f"hashtext({_literal(db.sql.lock_namespace)}), hashtext({_literal(self.uid)}))"
            )
        return self._begin

    def _failure(
        self, entry: _Pool, conn: psycopg.Connection[Any], exc: psycopg.Error, committing: bool
    ) -> StorageError:
        """The error to raise for ``exc``: :class:`_Retry` when nothing was committed."""
        db = self._db
        what = f"session {self.uid!r}"
        if conn.broken or conn.closed:
            _forget_prepared(conn)
            entry.pool.check()  # drop the other dead connections too
            detail = db.scrub(str(exc).strip())
            if committing:
                return StorageError(
                    f"{what}: the connection to PostgreSQL at {db.target} was lost while "
                    f"committing; the step may or may not have been applied ({detail})"
                )
            return _Retry(f"{what}: connection to {db.target} lost before commit: {detail}")
        if exc.sqlstate in _RETRYABLE_SQLSTATES:
            return _Retry(f"{what}: {db.scrub(str(exc).strip())}")
        if exc.sqlstate == "26000":  # a prepared statement vanished (DISCARD/DEALLOCATE)
            _forget_prepared(conn)
            return _Retry(f"{what}: prepared statements were reset on the connection")
        if exc.sqlstate in ("42P01", "3F000") and self.auto_create_schema:
            # The tables (or the schema) were dropped since this process created them.
            _schema_ready.discard((os.getpid(), db.public_dsn, db.password, db.schema))
            _forget_prepared(conn)
            return _Retry(f"{what}: {db.scrub(str(exc).strip())}")
        return _translate(db, exc, what)

    def _current(self, action: str) -> _Tx:
        tx = self._tx.current
        if tx is None:  # pragma: no cover - the base class always opens a step first
            raise RuntimeError(f"{action} must run inside _transaction()")
        return tx

    # --- reads -------------------------------------------------------------------
    def _read_slice(self, triggers: frozenset[str], instance_names: frozenset[str]) -> SessionSlice:
        tx = self._current("_read_slice")
        if not triggers and not instance_names:
            return SessionSlice()
        sql = self._db.sql
        uid = self._uid_literal()
        statements = []
        if triggers:
            statements.append(
                f"EXECUTE {sql.name('read_fire')}({uid}, {_text_array(sorted(triggers))})"
            )
        if instance_names:
            statements.append(
                f"EXECUTE {sql.name('read_named')}({uid}, {_text_array(sorted(instance_names))}, "
                f"{_text_array(sorted({task_name_of(n) for n in instance_names}))})"
            )
        rows = tx.query(*statements)
        configs: dict[str, TaskConfig] = {}
        counters: dict[str, int] = {}
        raw_instances: list[str] = []
        latest: dict[str, Any] = {}
        loads = json.loads
        for kind, name, text, counter in rows:
            if kind == 0 or kind == 3:
                configs[name] = decode_config(name, text)
                counters[name] = counter
            elif kind == 1:
                raw_instances.append(text)
            else:
                latest[name] = loads(text)
        instances: dict[str, TaskInstance] = {}
        for text in raw_instances:
            data = loads(text)
            config = configs.get(data["task"])
            if config is not None:
                instances[data["name"]] = TaskInstance.from_dict(data, config)
        return SessionSlice(configs, instances, latest, counters)

    def _read_session(self) -> SessionData:
        statement = f"EXECUTE {self._db.sql.name('read_session')}(%s)"  # client-side %
        tx = self._tx.current
        if tx is not None:
            rows = tx.query(statement % self._uid_literal())
        else:
            db = self._db
            if self.auto_create_schema:
                db.ensure_schema(f"session {self.uid!r}")

            def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
                cur = psycopg.ClientCursor(conn)
                # One implicit transaction: the settings apply to the read.
                cur.execute(f"{db.settings_sql}; {statement % self._uid_literal()}")
                cur.nextset()
                return cur.fetchall()

            rows = db.run(f"session {self.uid!r}", read)
        data = SessionData()
        loads = json.loads
        for kind, name, text, counter in rows:
            if kind == 0:
                data.tasks[name] = loads(text)
                data.counters[name] = counter
            elif kind == 1:
                data.instances[name] = loads(text)
            else:
                data.latest_kwargs[name] = loads(text)
        return data

    # --- writes ------------------------------------------------------------------
    def _write_changes(self, slice_: SessionSlice, changes: SessionChanges) -> None:
        tx = self._current("_write_changes")
        sql = self._db.sql
        uid = self._uid_literal()
        if changes.tasks:
            names = list(changes.tasks)
            pairs = [(t, n) for n in names for t in sorted(changes.tasks[n].triggers)]
            args = ", ".join(
                [
                    uid,
                    _text_array(names),
                    _text_array([dumps(changes.tasks[n].to_dict()) for n in names]),
                    _text_array([p[0] for p in pairs]),
                    _text_array([p[1] for p in pairs]),
                ]
            )
            tx.writes.append(f"EXECUTE {sql.name('write_tasks')}({args})")
        counters = list(changes.counters.items())
        instances = list(changes.instances.values())
        latest = list(changes.latest_kwargs.items())
        args = ", ".join(
            [
                uid,
                _text_array([name for name, _ in counters]),
                _text_array([str(int(n)) for _, n in counters]),
                _text_array([i.name for i in instances]),
                _text_array([i.config.name for i in instances]),
                _text_array([i.status for i in instances]),
                _text_array([encode_instance(i) for i in instances]),
                _text_array([t for t, _ in latest]),
                _text_array([dumps(k) for _, k in latest]),
            ]
        )
        tx.writes.append(f"EXECUTE {sql.name('write')}({args})")

    # --- lifecycle -----------------------------------------------------------------
    @classmethod
    def list_sessions(
        cls, dsn: str | None = None, schema: str = "public", **options: Any
    ) -> list[str]:
        """The uids of every stored session, sorted."""
        db = cls._database(dsn, schema, options)
        if options.get("auto_create_schema", True):
            db.ensure_schema("listing sessions")
        return db.run(
            "listing sessions",
            lambda conn: [r[0] for r in conn.execute(db.sql.list_sessions).fetchall()],
            prepared=False,
        )

    def delete_session(self) -> None:
        """Remove every record of this session (waits for a step in progress)."""
        statement = self._db.sql.delete_session % {"uid": self._uid_literal()}
        for attempt in range(self.max_transaction_attempts):
            try:
                with self._transaction():
                    self._current("delete_session").writes.append(statement)
                break
            except _Retry:
                if attempt == self.max_transaction_attempts - 1:
                    raise
        self.invalidate_cache()

    @classmethod
    def purge(
        cls,
        older_than: float,
        dsn: str | None = None,
        schema: str = "public",
        batch_size: int = 500,
        **options: Any,
    ) -> int:
        """Delete sessions not modified for ``older_than`` seconds; returns how many.

        A session that a step holds right now is skipped (it is in use).
        """
        if (
            not isinstance(older_than, (int, float))
            or isinstance(older_than, bool)
            or older_than < 0
        ):
            raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
        db = cls._database(dsn, schema, options)
        if options.get("auto_create_schema", True):
            db.ensure_schema("purging sessions")
        sql = db.sql

        def purge_batch(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            with conn.transaction():
                conn.execute(db.settings_sql)
                uids = [
                    r[0]
                    for r in conn.execute(
                        sql.lock_old_sessions, (float(older_than), sql.lock_namespace, batch_size)
                    ).fetchall()
                ]
                if not uids:
                    return 0, 0
                # A new statement: its snapshot sees every step committed before
                # the locks were granted.
                row = conn.execute(
                    sql.delete_old_sessions, {"uids": uids, "age": float(older_than)}
                ).fetchone()
                return len(uids), int(row[0]) if row else 0

        total = 0
        while True:
            locked, deleted = db.run("purging sessions", purge_batch, prepared=False)
            total += deleted
            if locked < batch_size:
                return total
