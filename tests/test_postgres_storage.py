"""What is specific to the PostgreSQL backend (the shared contract runs elsewhere).

Schema creation, JSONB records, secrets kept out of options and errors, session
lifecycle, slice reads that stay small, lock timeouts, a process killed while it
holds a step, an unreachable server, and connections killed by the server.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import POSTGRES_DSN, prepare_backend
from triggers import TriggerManager
from triggers.exceptions import StorageError, StorageUnavailableError
from triggers.runners.base import build_message
from triggers.runners.threading import ThreadingTaskRunner
from triggers.testing import threading_runner

psycopg = pytest.importorskip("psycopg")

SECRET = "pg-s3cret-Pa55"
DEVNULL = "triggers.testing.DevNullTask"
BOUND = 60  # seconds any wait in these tests may take before the test fails


@pytest.fixture(autouse=True)
def _postgres() -> None:
    prepare_backend("postgres")


@pytest.fixture
def admin() -> Iterator[psycopg.Connection]:
    """A plain autocommit connection to inspect what the backend stored."""
    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as conn:
        yield conn


@pytest.fixture
def schema(admin: psycopg.Connection) -> Iterator[str]:
    """A private schema, dropped afterwards (lifecycle tests must not see others' sessions)."""
    name = f"triggers_test_{uuid.uuid4().hex[:12]}"
    yield name
    admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def make(uid: str | None = None, **options: object):
    from triggers.storages.postgres import PostgresStorageBackend

    return PostgresStorageBackend(
        uid or f"pg-{uuid.uuid4().hex}", **{"dsn": POSTGRES_DSN, **options}
    )


def with_password(dsn: str, password: str) -> str:
    return dsn.replace("postgres@", f"postgres:{password}@", 1)


EVERY_CONFIG = {
    "t_every": {"after": [], "andEvery": "tick", "run": DEVNULL},
    "t_pair": {"after": ["tick", "other"], "run": DEVNULL},
    "t_unrelated": {"after": ["elsewhere"], "run": DEVNULL},
}


# ----------------------------------------------------------------------------
# Schema and data layout
# ----------------------------------------------------------------------------
def test_create_schema_is_idempotent_and_concurrent(schema: str, admin: psycopg.Connection):
    from triggers.storages.postgres import TABLES, PostgresStorageBackend

    errors: list[BaseException] = []

    def create() -> None:
        try:
            PostgresStorageBackend.create_schema(dsn=POSTGRES_DSN, schema=schema)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert not errors
    PostgresStorageBackend.create_schema(dsn=POSTGRES_DSN, schema=schema)  # once more

    tables = {
        r[0]
        for r in admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        )
    }
    assert tables == set(TABLES)
    indexes = {
        r[0] for r in admin.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                                    (schema,))
    }
    assert {"trigger_instances_unstarted", "trigger_index_by_task"} <= indexes


def test_records_are_jsonb(schema: str, admin: psycopg.Connection):
    storage = make(schema=schema)
    with threading_runner():
        manager = TriggerManager(storage)
        manager.update_configuration(EVERY_CONFIG)
        manager.fire("other", {"page": {"n": 1}})
        ThreadingTaskRunner.join_all(timeout=BOUND)
    uid = storage.uid
    row = admin.execute(
        f'SELECT pg_typeof(data)::text, data->>\'status\', data->\'kwargs\'->\'other\'->\'page\' '
        f'FROM "{schema}".trigger_instances WHERE uid = %s AND name = %s',
        (uid, "t_pair#0"),
    ).fetchone()
    assert row == ("jsonb", "unstarted", {"n": 1})
    row = admin.execute(
        f'SELECT pg_typeof(kwargs)::text, kwargs FROM "{schema}".trigger_kwargs '
        "WHERE uid = %s AND trigger = 'other'",
        (uid,),
    ).fetchone()
    assert row == ("jsonb", {"page": {"n": 1}})
    row = admin.execute(
        f'SELECT pg_typeof(config)::text, config->>\'andEvery\' FROM "{schema}".trigger_tasks '
        "WHERE uid = %s AND name = 't_every'",
        (uid,),
    ).fetchone()
    assert row == ("jsonb", "tick")
    index = admin.execute(
        f'SELECT trigger FROM "{schema}".trigger_index WHERE uid = %s AND task = %s '
        "ORDER BY trigger",
        (uid, "t_pair"),
    ).fetchall()
    assert index == [("other",), ("tick",)]


def test_changing_a_task_updates_its_trigger_index(schema: str, admin: psycopg.Connection):
    storage = make(schema=schema)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_a": {"after": ["x", "y"], "run": DEVNULL}})
    manager.update_configuration({"t_a": {"after": ["y", "z"], "run": DEVNULL}})
    rows = admin.execute(
        f'SELECT trigger FROM "{schema}".trigger_index WHERE uid = %s ORDER BY trigger',
        (storage.uid,),
    ).fetchall()
    assert rows == [("y",), ("z",)]


def test_a_fire_reads_only_what_it_touches():
    storage = make()
    try:
        TriggerManager(storage).update_configuration(EVERY_CONFIG)
        with storage.acquire_lock():
            for _ in range(2000):
                storage.create_instance("t_every", status="finished")
            waiting = storage.create_instance("t_every")  # unstarted: a fire must see it
            storage.create_instance("t_unrelated")
            storage.save()
        assert waiting.name == "t_every#2000"
        assert len(storage) == 2002

        with storage._transaction():
            slice_ = storage._read_slice(frozenset({"tick"}), frozenset({"t_every#7"}))
        assert set(slice_.tasks) == {"t_every", "t_pair"}
        assert set(slice_.instances) == {"t_every#2000", "t_every#7"}
        assert slice_.instances["t_every#7"].status == "finished"
        assert slice_.counters == {"t_every": 2001, "t_pair": 0}

        with storage._transaction():
            slice_ = storage._read_slice(frozenset({"elsewhere"}), frozenset())
        assert set(slice_.tasks) == {"t_unrelated"}
        assert set(slice_.instances) == {"t_unrelated#0"}
    finally:
        storage.delete_session()


def test_nul_characters_are_refused_and_nothing_is_written():
    storage = make()
    try:
        manager = TriggerManager(storage)
        manager.fire("x", {"ok": 1})
        with pytest.raises(StorageError, match="NUL"):
            manager.fire("x", {"text": "a\x00b"})
        storage.invalidate_cache()
        assert storage.latest_kwargs == {"x": {"ok": 1}}
    finally:
        storage.delete_session()


def test_dropped_tables_are_created_again(schema: str, admin: psycopg.Connection):
    storage = make(schema=schema)
    TriggerManager(storage).fire("x", {"n": 1})
    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    TriggerManager(storage).fire("x", {"n": 2})
    storage.invalidate_cache()
    assert storage.latest_kwargs == {"x": {"n": 2}}


# ----------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dsn",
    [
        with_password(POSTGRES_DSN, SECRET),
        POSTGRES_DSN + f"?password={SECRET}&application_name=triggers_pw_test",
        f"host=127.0.0.1 port=5432 dbname=test user=postgres password={SECRET}",
    ],
    ids=["uri-userinfo", "uri-query", "key-value"],
)
def test_options_and_messages_never_carry_the_password(dsn: str):
    storage = make(dsn=dsn)
    manager = TriggerManager(storage)
    with threading_runner():
        manager.update_configuration({"t_a": {"after": ["x"], "run": DEVNULL}})
        scheduled = manager.fire("x")
        ThreadingTaskRunner.join_all(timeout=BOUND)
    try:
        options = storage.options()
        assert SECRET not in repr(options)
        assert SECRET not in repr(storage)
        assert SECRET not in storage.dsn
        assert SECRET not in repr(build_message(manager, scheduled[0]))
        # The stripped DSN still names the same server.
        assert "127.0.0.1" in options["dsn"] and "5432" in options["dsn"]
        assert "postgres" in options["dsn"] and "test" in options["dsn"]
    finally:
        storage.delete_session()


def test_worker_takes_the_password_from_its_own_environment(monkeypatch: pytest.MonkeyPatch):
    from triggers.storages.postgres import PostgresStorageBackend

    storage = make(dsn=with_password(POSTGRES_DSN, SECRET))
    monkeypatch.setenv("TRIGGERS_POSTGRES_DSN", with_password(POSTGRES_DSN, SECRET))
    rebuilt = PostgresStorageBackend(storage.uid, **storage.options())
    assert rebuilt._db.password == SECRET  # used to connect, never shown
    assert SECRET not in repr(rebuilt.options())
    # Another server's password is not handed out.
    monkeypatch.setenv("TRIGGERS_POSTGRES_DSN", f"postgresql://postgres:{SECRET}@10.9.9.9/test")
    assert PostgresStorageBackend(storage.uid, **storage.options())._db.password is None


def test_default_dsn_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from triggers.storages.postgres import PostgresStorageBackend

    monkeypatch.setenv("TRIGGERS_POSTGRES_DSN", with_password(POSTGRES_DSN, SECRET))
    storage = PostgresStorageBackend(f"pg-{uuid.uuid4().hex}")
    assert storage.dsn == POSTGRES_DSN
    assert len(storage) == 0


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"schema": "bad-name"}, "schema must be an identifier"),
        ({"schema": "1abc"}, "schema must be an identifier"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"connect_timeout": "5"}, "connect_timeout must be a positive number"),
        ({"pool_size": 0}, "pool_size must be a positive integer"),
        ({"dsn": f"host=127.0.0.1 password {SECRET} =="}, "invalid PostgreSQL DSN"),
        ({"dsn": 5432}, "DSN must be a string"),
    ],
)
def test_bad_options_are_rejected_clearly(options: dict, fragment: str):
    with pytest.raises(ValueError) as info:
        make(**options)
    assert fragment in str(info.value)
    assert SECRET not in str(info.value)


# ----------------------------------------------------------------------------
# Lifecycle
# ----------------------------------------------------------------------------
def test_list_delete_and_purge(schema: str, admin: psycopg.Connection):
    from triggers.storages.postgres import PostgresStorageBackend

    uids = [f"life-{n}-{uuid.uuid4().hex[:8]}" for n in range(4)]
    for uid in uids:
        manager = TriggerManager(make(uid, schema=schema))
        manager.update_configuration({"t_a": {"after": ["x", "y"], "run": DEVNULL}})
        manager.fire("x", {"uid": uid})
    assert PostgresStorageBackend.list_sessions(dsn=POSTGRES_DSN, schema=schema) == sorted(uids)

    make(uids[0], schema=schema).delete_session()
    assert PostgresStorageBackend.list_sessions(dsn=POSTGRES_DSN, schema=schema) == sorted(
        uids[1:]
    )
    for table in ("trigger_tasks", "trigger_index", "trigger_instances", "trigger_kwargs"):
        count = admin.execute(
            f'SELECT count(*) FROM "{schema}".{table} WHERE uid = %s', (uids[0],)
        ).fetchone()
        assert count == (0,), table

    # uids[1] and uids[2] were last modified two hours ago; uids[2] is in use.
    admin.execute(
        f"UPDATE \"{schema}\".trigger_sessions SET modified = now() - interval '2 hours' "
        "WHERE uid = ANY(%s)",
        ([uids[1], uids[2]],),
    )
    busy = make(uids[2], schema=schema)
    with busy.acquire_lock():
        assert PostgresStorageBackend.purge(3600, dsn=POSTGRES_DSN, schema=schema) == 1
    assert PostgresStorageBackend.list_sessions(dsn=POSTGRES_DSN, schema=schema) == sorted(
        uids[2:]
    )
    assert len(make(uids[1], schema=schema)) == 0
    assert len(make(uids[3], schema=schema)) == 1
    # Once released, the old session goes too; the fresh one stays.
    assert PostgresStorageBackend.purge(3600, dsn=POSTGRES_DSN, schema=schema) == 1
    assert PostgresStorageBackend.list_sessions(dsn=POSTGRES_DSN, schema=schema) == [uids[3]]
    with pytest.raises(ValueError, match="older_than"):
        PostgresStorageBackend.purge(-1, dsn=POSTGRES_DSN, schema=schema)


def test_a_rebuilt_storage_sees_the_same_session():
    from triggers.storages.postgres import PostgresStorageBackend

    storage = make()
    try:
        TriggerManager(storage).update_configuration(EVERY_CONFIG)
        TriggerManager(storage).fire("other", {"k": 1})
        rebuilt = PostgresStorageBackend(storage.uid, **storage.options())
        assert rebuilt.debug_repr() == storage.debug_repr()
        assert rebuilt.latest_kwargs == {"other": {"k": 1}}
    finally:
        storage.delete_session()


# ----------------------------------------------------------------------------
# Locking, timeouts, crashes and outages
# ----------------------------------------------------------------------------
def test_a_step_waits_at_most_timeout_for_a_held_session():
    holder = make()
    try:
        TriggerManager(holder).update_configuration(EVERY_CONFIG)
        impatient = TriggerManager(make(holder.uid, timeout=0.3))
        other_session = TriggerManager(make(timeout=0.3))
        with holder.acquire_lock():
            with pytest.raises(StorageError) as info:
                impatient.fire("other")
            # Different sessions are not blocked.
            other_session.fire("other")
        message = str(info.value)
        assert holder.uid in message and "lock" in message
        assert "other" not in holder.latest_kwargs
        impatient.fire("other")  # released: works again
        holder.invalidate_cache()
        assert "other" in holder.latest_kwargs
        other_session.storage.delete_session()
    finally:
        holder.delete_session()


CHILD = textwrap.dedent(
    """
    import sys, time
    from triggers import TriggerManager
    from triggers.storages.postgres import PostgresStorageBackend

    original = PostgresStorageBackend._read_slice

    def read_then_hang(self, triggers, instance_names):
        slice_ = original(self, triggers, instance_names)  # the session lock is held now
        print("HOLDING", flush=True)
        time.sleep(120)
        return slice_

    PostgresStorageBackend._read_slice = read_then_hang
    storage = PostgresStorageBackend(sys.argv[2], dsn=sys.argv[1])
    TriggerManager(storage).fire("tick", {"from": "child"})
    """
)


def _wait_for_line(proc: subprocess.Popen, expected: str) -> None:
    deadline = time.monotonic() + BOUND
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                break
    proc.kill()
    errors = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"child never printed {expected!r}: {errors}")


def test_a_process_killed_while_holding_a_step_leaves_the_session_usable(tmp_path: Path):
    storage = make()
    try:
        manager = TriggerManager(storage)
        manager.update_configuration(EVERY_CONFIG)
        manager.fire("other", {"from": "parent"})
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        proc = subprocess.Popen(
            [sys.executable, str(script), POSTGRES_DSN, storage.uid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_line(proc, "HOLDING")
            # The child holds the session: a step elsewhere times out, nothing written.
            with pytest.raises(StorageError, match="lock"):
                TriggerManager(make(storage.uid, timeout=0.3)).fire("tick", {"from": "blocked"})
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(BOUND)
        # The server rolls the child's transaction back when its connection drops.
        with threading_runner():
            survivor = TriggerManager(make(storage.uid, timeout=BOUND))
            scheduled = survivor.fire("tick", {"from": "parent"})
            ThreadingTaskRunner.join_all(timeout=BOUND)
        assert sorted(i.name for i in scheduled) == ["t_every#0", "t_pair#0"]
        storage.invalidate_cache()
        assert storage.latest_kwargs["tick"] == {"from": "parent"}
        assert sorted(storage.instances) == ["t_every#0", "t_pair#0"]
        assert all(i.status == "finished" for i in storage)
        assert storage.metadata["counters"]["t_every"] == 1
    finally:
        storage.delete_session()


def test_unreachable_server_raises_storage_unavailable_and_writes_nothing(
    admin: psycopg.Connection,
):
    from triggers.storages.postgres import PostgresStorageBackend

    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:1/test"
    storage = make(dsn=dsn, connect_timeout=2)
    try:
        with pytest.raises(StorageUnavailableError) as info:
            TriggerManager(storage).fire("x", {"a": 1})
        message = str(info.value)
        assert storage.uid in message
        assert "127.0.0.1:1" in message
        assert SECRET not in message
        with pytest.raises(StorageUnavailableError):
            PostgresStorageBackend.list_sessions(dsn=dsn, connect_timeout=2)
    finally:
        PostgresStorageBackend.close_pools(dsn)
    # Nothing reached the real server under that uid either.
    assert admin.execute(
        "SELECT count(*) FROM public.trigger_sessions WHERE uid = %s", (storage.uid,)
    ).fetchone() == (0,)


def test_work_continues_after_the_server_kills_the_connections(admin: psycopg.Connection):
    from triggers.storages.postgres import PostgresStorageBackend

    app = f"triggers_kill_{uuid.uuid4().hex[:8]}"
    dsn = f"{POSTGRES_DSN}?application_name={app}"
    storage = make(dsn=dsn)
    try:
        manager = TriggerManager(storage)
        manager.update_configuration(EVERY_CONFIG)
        manager.fire("other", {"n": 1})
        pids = [
            r[0]
            for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            )
        ]
        assert pids
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            time.sleep(0.05)
        with threading_runner():
            scheduled = manager.fire("tick", {"n": 2})
            ThreadingTaskRunner.join_all(timeout=BOUND)
        assert sorted(i.name for i in scheduled) == ["t_every#0", "t_pair#0"]
        fresh = {
            r[0]
            for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            )
        }
        assert fresh and not fresh & set(pids)  # the pool replaced its dead connections
        storage.invalidate_cache()
        assert storage.latest_kwargs["other"] == {"n": 1}
        assert storage.latest_kwargs["tick"] == {"n": 2}
    finally:
        storage.delete_session()
        PostgresStorageBackend.close_pools(dsn)


def test_a_connection_lost_during_commit_is_reported_and_not_retried(
    monkeypatch: pytest.MonkeyPatch,
):
    from triggers.storages.postgres import PostgresStorageBackend

    dsn = f"{POSTGRES_DSN}?application_name=triggers_commit_{uuid.uuid4().hex[:8]}"
    storage = make(dsn=dsn)
    try:
        manager = TriggerManager(storage)
        manager.fire("x", {"n": 1})
        original = storage._write_changes
        calls = []

        def write_then_die(slice_, changes):
            calls.append(changes)
            original(slice_, changes)
            # The server ends this connection while the writes and COMMIT are in flight.
            storage._current("test").writes.append(
                "SELECT pg_terminate_backend(pg_backend_pid())"
            )

        monkeypatch.setattr(storage, "_write_changes", write_then_die)
        with pytest.raises(StorageError, match="may or may not have been applied"):
            manager.fire("x", {"n": 2})
        assert len(calls) == 1  # an unknown outcome is never retried blindly
        monkeypatch.undo()
        storage.invalidate_cache()
        assert storage.latest_kwargs == {"x": {"n": 1}}  # here it was not applied
        manager.fire("x", {"n": 3})  # and the storage works on
        storage.invalidate_cache()
        assert storage.latest_kwargs == {"x": {"n": 3}}
    finally:
        storage.delete_session()
        PostgresStorageBackend.close_pools(dsn)


def _fire_in_child(uid: str, queue: mp.Queue) -> None:
    try:
        TriggerManager(make(uid)).fire("other", {"from": os.getpid()})
        queue.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_a_forked_child_uses_its_own_connections():
    storage = make()
    try:
        manager = TriggerManager(storage)
        manager.update_configuration(EVERY_CONFIG)  # the parent's pool exists now
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_fire_in_child, args=(storage.uid, queue))
        child.start()
        child.join(BOUND)
        assert queue.get(timeout=BOUND) == "ok"
        assert child.exitcode == 0
        # The parent's pooled connections survived the child.
        manager.fire("other", {"from": "parent"})
        storage.invalidate_cache()
        assert storage.latest_kwargs == {"other": {"from": "parent"}}
        assert storage["t_pair#0"].kwargs == {"other": {"from": child.pid}}
    finally:
        storage.delete_session()
