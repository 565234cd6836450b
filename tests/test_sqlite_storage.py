"""What is specific to the SQLite backend: query plans, files, lifecycle."""

from __future__ import annotations

import sqlite3

import pytest

from triggers import TriggerManager
from triggers.storages.sqlite import SqliteStorageBackend
from triggers.testing import threading_runner

RUN = "triggers.testing.DevNullTask"


def test_steps_only_search_indexes_never_scan_a_session(tmp_path):
    """A fire, a status change with a cascade and a replay read through indexes only,
    so their cost does not grow with the size of the session."""
    storage = SqliteStorageBackend("plans", path=tmp_path / "t.sqlite3")
    manager = TriggerManager(storage)
    manager.update_configuration(
        {
            "t_page": {"after": ["start"], "andEvery": "page", "run": RUN, "using": "threading"},
            "t_next": {"after": ["t_page"], "run": RUN, "using": "threading"},
        }
    )
    statements: list[str] = []
    storage.connection.set_trace_callback(statements.append)
    with threading_runner():
        manager.fire("page", {"n": 1})
        manager.update_instance_status("t_page#0", "failed")
        manager.replay_failed_instance("t_page#0")
        manager.update_instance_status("t_page#1", "finished", cascade=True)
    storage.connection.set_trace_callback(None)

    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects, statements
    plans = []
    for select in selects:
        plan = [row[3] for row in storage.connection.execute(f"EXPLAIN QUERY PLAN {select}")]
        plans.append((select, plan))
        assert not any(step.startswith("SCAN") for step in plan), (select, plan)
    # Every search narrows by the session uid *and* a key (task, name, trigger), not
    # by the uid alone, which would read the whole session.
    for select, plan in plans:
        for step in plan:
            if step.startswith("SEARCH"):
                assert "(uid=? AND " in step, (select, plan)


def test_options_rebuild_the_same_storage(tmp_path):
    storage = SqliteStorageBackend("opts", path=tmp_path / "o.sqlite3", timeout=3)
    rebuilt = SqliteStorageBackend("opts", **storage.options())
    assert rebuilt.path == storage.path and rebuilt.timeout == 3


def test_data_is_json_text_never_pickle(tmp_path):
    path = tmp_path / "j.sqlite3"
    manager = TriggerManager(SqliteStorageBackend("json", path=path))
    manager.update_configuration({"t_a": {"after": ["a", "b"], "run": RUN}})
    manager.fire("a", {"v": [1, 2]})
    conn = sqlite3.connect(path)
    (data,) = conn.execute("SELECT data FROM trigger_instances WHERE uid = 'json'").fetchone()
    assert '"kwargs":{"a":{"v":[1,2]}}' in data
    (kwargs,) = conn.execute("SELECT kwargs FROM trigger_kwargs WHERE uid = 'json'").fetchone()
    assert kwargs == '{"v":[1,2]}'


def test_lifecycle_list_delete_purge(tmp_path):
    path = tmp_path / "l.sqlite3"
    for uid in ("s1", "s2", "s3"):
        TriggerManager(SqliteStorageBackend(uid, path=path)).fire("x")
    assert SqliteStorageBackend.list_sessions(path=str(path)) == ["s1", "s2", "s3"]
    SqliteStorageBackend("s2", path=path).delete_session()
    assert SqliteStorageBackend.list_sessions(path=str(path)) == ["s1", "s3"]
    assert SqliteStorageBackend.purge(3600, path=str(path)) == 0
    assert SqliteStorageBackend.purge(-1, path=str(path)) == 2
    assert SqliteStorageBackend.list_sessions(path=str(path)) == []


def test_a_database_held_locked_raises_a_clear_error_and_writes_nothing(tmp_path):
    from triggers.exceptions import StorageUnavailableError

    path = tmp_path / "busy.sqlite3"
    storage = SqliteStorageBackend("busy", path=path, timeout=0.2)
    TriggerManager(storage).fire("before")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailableError, match="stayed locked"):
            TriggerManager(storage).fire("during")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    storage.invalidate_cache()
    assert set(storage.latest_kwargs) == {"before"}
