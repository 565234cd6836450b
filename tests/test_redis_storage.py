"""What is specific to the Redis backend (the shared contract suite covers the rest).

Runs against the Redis of ``TRIGGERS_TEST_REDIS_URL`` (db 15 by default) and, for
outage and authentication tests, against private ``redis-server`` processes this
module starts on free loopback ports in temporary directories (never the
machine's main Redis).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REDIS_URL, prepare_backend
from triggers import TriggerManager
from triggers.config import parse_task
from triggers.exceptions import StorageConflictError, StorageUnavailableError
from triggers.runners.base import BaseTaskRunner, build_message, task_runners
from triggers.runners.threading import ThreadingTaskRunner
from triggers.storages import storage_backends
from triggers.testing import threading_runner
from triggers.types import TaskInstance

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

redis_mod = pytest.importorskip("redis")
RedisStorageBackend = pytest.importorskip(
    "triggers.storages.redis", reason="Redis backend not installed"
).RedisStorageBackend

DEVNULL = "triggers.testing.DevNullTask"
PASS = "triggers.testing.PassThruTask"
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _redis_available() -> None:
    prepare_backend("redis")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of its own for each test; its keys are removed afterwards."""
    name = f"triggers-redis-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis_mod.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=name + ":*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def make(uid: str | None = None, prefix: str = "triggers-test", **options: Any) -> Any:
    return RedisStorageBackend(
        uid or f"test-{uuid.uuid4().hex}", url=REDIS_URL, prefix=prefix, **options
    )


@pytest.fixture
def raw() -> Iterator[Any]:
    client = redis_mod.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


# ---------------------------------------------------------------------------
# Options, validation, secrets
# ---------------------------------------------------------------------------
def test_options_never_contain_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIGGERS_REDIS_URL", raising=False)
    monkeypatch.setenv("TRIGGERS_REDIS_PASSWORD", "from-env-secret")
    storage = RedisStorageBackend(
        "s1",
        url="rediss://alice:hunter2@redis.example:6380/3?password=other-secret&ssl_cert_reqs=none",
        prefix="app",
        ttl=60,
    )
    options = storage.options()
    text = json.dumps(options)
    for secret in ("hunter2", "other-secret", "from-env-secret"):
        assert secret not in text
        assert secret not in repr(storage)
    assert options["url"] == "rediss://alice@redis.example:6380/3?ssl_cert_reqs=none"
    assert options["prefix"] == "app" and options["ttl"] == 60
    # A worker rebuilds the same storage from the options alone.
    rebuilt = storage_backends.get("redis", "s1", **options)
    assert rebuilt.options() == options and rebuilt.keys == storage.keys


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw-secret@h:1/2", "redis://h:1/2"),
        ("redis://user:pw%40secret@h/0", "redis://user@h/0"),
        ("redis://h/0?password=pw-secret&db=3", "redis://h/0?db=3"),
        ("rediss://h/0?ssl_ca_certs=/etc/ca.pem", "rediss://h/0?ssl_ca_certs=/etc/ca.pem"),
        ("unix://:pw-secret@/run/redis.sock?db=3", "unix:///run/redis.sock?db=3"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
    ],
)
def test_password_is_stripped_from_every_url_form(url: str, expected: str) -> None:
    assert RedisStorageBackend("s", url=url).options()["url"] == expected


def test_task_message_carries_no_password() -> None:
    url = "redis://:not-a-real-password@127.0.0.1:6379/15"
    manager = TriggerManager(RedisStorageBackend("s-msg", url=url))
    config = parse_task("t_a", {"after": ["a"], "run": DEVNULL})
    message = build_message(manager, TaskInstance("t_a#0", config, "scheduled"))
    assert "not-a-real-password" not in json.dumps(message)
    assert message["storage"] == "redis" and message["storage_options"]["url"] == url.replace(
        ":not-a-real-password@", ""
    )


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"url": "http://:pw-secret@127.0.0.1:6379/0"}, "expected one of redis://"),
        ({"prefix": "a{b}"}, "must not contain"),
        ({"prefix": ""}, "non-empty string"),
        ({"ttl": 0}, "'ttl' must be a positive whole number"),
        ({"ttl": 1.5}, "'ttl' must be a positive whole number"),
        ({"connect_timeout": -1}, "'connect_timeout' must be a positive number"),
    ],
)
def test_bad_options_are_rejected_clearly(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        RedisStorageBackend("s", **options)
    assert fragment in str(info.value)
    assert "pw-secret" not in str(info.value)


def test_default_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERS_REDIS_URL", "redis://:env-secret@127.0.0.1:6390/4")
    storage = RedisStorageBackend("s")
    assert storage.options()["url"] == "redis://127.0.0.1:6390/4"
    monkeypatch.delenv("TRIGGERS_REDIS_URL")
    assert RedisStorageBackend("s").options()["url"] == "redis://127.0.0.1:6379/0"


def test_one_pool_per_process_and_server() -> None:
    a, b = make(), make()
    assert a._conn is b._conn
    assert make(connect_timeout=1.0)._conn is not a._conn


def test_forked_child_uses_its_own_connections(prefix: str) -> None:
    import multiprocessing as mp

    storage = make("fork", prefix=prefix)
    TriggerManager(storage).fire("before-fork", {})
    ctx = mp.get_context("fork")
    child = ctx.Process(target=_fire_in_child, args=(prefix, os.getpid()))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    storage.invalidate_cache()
    assert set(storage.latest_kwargs) == {"before-fork", "in-child"}


def _fire_in_child(prefix: str, parent_pid: int) -> None:
    storage = make("fork", prefix=prefix)
    assert os.getpid() != parent_pid
    TriggerManager(storage).fire("in-child", {})


# ---------------------------------------------------------------------------
# Data layout
# ---------------------------------------------------------------------------
def test_data_is_json_in_hashes_sharing_one_hash_tag(raw: Any, prefix: str) -> None:
    storage = make("layout:1", prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_a": {"after": ["a", "b"], "unless": ["u"], "run": DEVNULL}})
    manager.fire("a", {"n": 1})
    keys = sorted(raw.scan_iter(match=prefix + ":*"))
    assert keys == sorted(storage.keys)
    assert all("{layout:1}" in key and raw.type(key) == "hash" for key in keys)
    meta, tasks, tasktriggers, index, instances, unstarted, kwargs, counters, versions = (
        storage.keys
    )
    assert json.loads(raw.hget(tasks, "t_a")) == {
        "after": ["a", "b"],
        "run": DEVNULL,
        "unless": ["u"],
    }
    assert json.loads(raw.hget(tasktriggers, "t_a")) == ["a", "b", "u"]
    assert {t: json.loads(v) for t, v in raw.hgetall(index).items()} == {
        "a": ["t_a"],
        "b": ["t_a"],
        "u": ["t_a"],
    }
    instance = json.loads(raw.hget(instances, "t_a#0"))
    assert instance["status"] == "unstarted" and instance["kwargs"] == {"a": {"n": 1}}
    assert json.loads(raw.hget(unstarted, "t_a")) == ["t_a#0"]
    assert json.loads(raw.hget(kwargs, "a")) == {"n": 1}
    assert raw.hget(counters, "t_a") == "1"
    assert int(raw.hget(meta, "version")) == storage._read_session().version > 0
    assert raw.hgetall(versions) == {"t_a": raw.hget(meta, "version")}  # last touched now

    # Moving out of unstarted updates the per-task list; reconfiguring the index.
    manager.update_instance_status("t_a#0", "failed")
    assert raw.hget(unstarted, "t_a") is None
    manager.update_configuration({"t_a": {"after": ["c"], "run": DEVNULL}})
    assert {t: json.loads(v) for t, v in raw.hgetall(index).items()} == {"c": ["t_a"]}


def test_a_fire_reads_only_what_it_touches(prefix: str) -> None:
    storage = make("big", prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration(
        {
            "t_row": {"after": ["sheet"], "andEvery": "row", "run": DEVNULL},
            "t_other": {"after": ["x", "y"], "run": DEVNULL},
        }
    )
    manager.fire("x", {"big": "z" * 1000})  # an unrelated unstarted instance
    with storage.acquire_lock():
        for n in range(2000):
            storage.create_instance("t_row", kwargs={"row": {"n": n}}, status="finished")
        storage.create_instance("t_row", kwargs={"row": {"n": 2000}})  # waits for "sheet"
        storage.save()
    assert len(storage) == 2002

    slice_ = storage._read_slice(frozenset({"row"}), frozenset())
    assert set(slice_.tasks) == {"t_row"}
    assert set(slice_.instances) == {"t_row#2000"}
    assert slice_.counters == {"t_row": 2001}
    assert slice_.latest_kwargs == {}

    slice_ = storage._read_slice(frozenset({"sheet"}), frozenset({"t_row#7"}))
    assert set(slice_.instances) == {"t_row#2000", "t_row#7"}

    with threading_runner():
        scheduled = manager.fire("sheet", {"s": 1})
        ThreadingTaskRunner.join_all(timeout=30)
    assert [i.name for i in scheduled] == ["t_row#2000"]
    storage.invalidate_cache()
    assert storage["t_row#2000"].status == "finished"
    assert storage["t_other#0"].status == "unstarted"


# ---------------------------------------------------------------------------
# TTL and lifecycle
# ---------------------------------------------------------------------------
def test_ttl_is_applied_to_every_key_and_refreshed(raw: Any, prefix: str) -> None:
    storage = make("ttl", prefix=prefix, ttl=300)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_a": {"after": ["a", "b"], "run": DEVNULL}})
    manager.fire("a", {})
    present = [k for k in storage.keys if raw.exists(k)]
    assert len(present) == 9
    for key in present:
        assert 0 < raw.ttl(key) <= 300
    raw.expire(storage.keys[0], 5)  # as if time had passed
    manager.fire("c", {})
    assert raw.ttl(storage.keys[0]) > 5  # every write refreshes it
    assert 0 < storage.ttl_remaining() <= 300

    # A writer without ttl makes the session permanent again.
    TriggerManager(make("ttl", prefix=prefix)).fire("d", {})
    assert all(raw.ttl(k) == -1 for k in present)
    assert storage.ttl_remaining() is None


def test_list_delete_and_purge_sessions(raw: Any, prefix: str) -> None:
    uids = ["s-1", "s:2", "s*3?[x]"]
    for uid in uids:
        TriggerManager(make(uid, prefix=prefix)).fire("a", {"uid": uid})
    other = make("elsewhere", prefix=prefix + "-other")
    TriggerManager(other).fire("a", {})
    try:
        assert RedisStorageBackend.list_sessions(url=REDIS_URL, prefix=prefix) == sorted(uids)

        make("s:2", prefix=prefix).delete_session()
        assert RedisStorageBackend.list_sessions(url=REDIS_URL, prefix=prefix) == ["s*3?[x]", "s-1"]
        assert not any(raw.exists(k) for k in make("s:2", prefix=prefix).keys)

        assert RedisStorageBackend.purge(3600, url=REDIS_URL, prefix=prefix) == 0
        time.sleep(0.01)
        TriggerManager(make("fresh", prefix=prefix)).fire("a", {})
        meta = make("fresh", prefix=prefix).keys[0]
        raw.hset(meta, "modified", time.time() + 3600)  # looks written in the future
        assert RedisStorageBackend.purge(0, url=REDIS_URL, prefix=prefix) == 2
        assert RedisStorageBackend.list_sessions(url=REDIS_URL, prefix=prefix) == ["fresh"]
        assert RedisStorageBackend.list_sessions(url=REDIS_URL, prefix=prefix + "-other") == [
            "elsewhere"
        ]
    finally:
        other.delete_session()
    with pytest.raises(ValueError, match="older_than"):
        RedisStorageBackend.purge(-1, url=REDIS_URL, prefix=prefix)


# ---------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------
def test_acquire_lock_save_conflicts_with_a_concurrent_change(prefix: str) -> None:
    storage = make("lock", prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_a": {"after": ["a", "b"], "run": DEVNULL}})
    with storage.acquire_lock():
        storage.create_instance("t_a", kwargs={"a": {}})
        storage.save()
        storage.create_instance("t_a", kwargs={"a": {}})
        storage.save()  # a second save in the same lock compares with the first
        TriggerManager(make("lock", prefix=prefix)).fire("z", {})  # someone else writes
        storage.create_instance("t_a")
        with pytest.raises(StorageConflictError, match="nothing was saved"):
            storage.save()
    storage.invalidate_cache()
    assert sorted(i.name for i in storage) == ["t_a#0", "t_a#1"]


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from triggers import TriggerManager
    from triggers.storages.redis import RedisStorageBackend

    class CrashingStorage(RedisStorageBackend):
        def _write_changes(self, slice_, changes):
            # Read and planned, about to commit: die like a killed worker.
            os.kill(os.getpid(), signal.SIGKILL)

    mode = sys.argv[1]
    storage = CrashingStorage({uid!r}, url={url!r}, prefix={prefix!r})
    if mode == "fire":
        TriggerManager(storage).fire("a", {{"by": "child"}})
    else:
        with storage.acquire_lock():
            storage.create_instance("t_x", kwargs={{"a": {{"by": "child"}}}})
            storage.save()
    """
)


@pytest.mark.parametrize("mode", ["fire", "lock"])
def test_a_process_killed_mid_step_leaves_nothing_behind(mode: str, prefix: str) -> None:
    storage = make("crash", prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    before = storage._read_session().to_json()
    script = CHILD.format(src=SRC, uid="crash", url=REDIS_URL, prefix=prefix)
    child = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert storage._read_session().to_json() == before

    # Another process (this one) can use the session at once.
    with threading_runner():
        assert manager.fire("b", {"by": "parent"}) == []
        scheduled = manager.fire("a", {"by": "parent"})
        ThreadingTaskRunner.join_all(timeout=30)
    assert [i.name for i in scheduled] == ["t_x#0"]
    storage.invalidate_cache()
    assert storage["t_x#0"].metadata["result"] == {
        "kwargs": {"a": {"by": "parent"}, "b": {"by": "parent"}}
    }


# ---------------------------------------------------------------------------
# Unavailable server
# ---------------------------------------------------------------------------
def test_unreachable_server_raises_storage_unavailable() -> None:
    storage = RedisStorageBackend(
        "down-1", url="redis://:pw-secret@127.0.0.1:1/0", connect_timeout=1.0
    )
    manager = TriggerManager(storage)
    with pytest.raises(StorageUnavailableError) as info:
        manager.fire("a", {"n": 1})
    message = str(info.value)
    assert "'down-1'" in message and "redis://127.0.0.1:1/0" in message
    assert "pw-secret" not in message
    with pytest.raises(StorageUnavailableError):
        manager.update_configuration({"t_a": {"after": ["a"], "run": DEVNULL}})
    with pytest.raises(StorageUnavailableError):
        RedisStorageBackend.list_sessions(url="redis://127.0.0.1:1/0", connect_timeout=1.0)
    with pytest.raises(StorageUnavailableError):
        len(storage)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a free loopback port (AOF on, in a temp dir)."""

    def __init__(
        self, directory: Path, password: str | None = None, unixsocket: bool = False
    ) -> None:
        self.directory = directory
        self.password = password
        self.socket_path = str(directory / "redis.sock") if unixsocket else None
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_mod.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis_mod.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.skip("could not start a private redis-server")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_fire_fails_cleanly_while_redis_is_down_and_works_after(
    private_redis: PrivateRedis,
) -> None:
    storage = RedisStorageBackend(
        "outage", url=private_redis.url, connect_timeout=1.0, socket_timeout=2.0
    )
    manager = TriggerManager(storage)
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    manager.fire("a", {"n": 1})

    private_redis.stop()
    with pytest.raises(StorageUnavailableError, match="'outage'"):
        manager.fire("b", {"n": "lost"})

    private_redis.start()  # same port, same data directory
    storage.invalidate_cache()
    assert storage.latest_kwargs == {"a": {"n": 1}}  # the failed fire wrote nothing
    with threading_runner():
        scheduled = manager.fire("b", {"n": 2})
        ThreadingTaskRunner.join_all(timeout=30)
    assert [i.name for i in scheduled] == ["t_x#0"]
    storage.invalidate_cache()
    assert storage["t_x#0"].metadata["result"] == {"kwargs": {"a": {"n": 1}, "b": {"n": 2}}}


class PausingStorage(RedisStorageBackend):  # type: ignore[misc, valid-type]
    """Pauses the server's writes for 1.5 s right before committing (CLIENT PAUSE)."""

    admin: Any = None

    def _write_changes(self, slice_: Any, changes: Any) -> None:
        self.admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        super()._write_changes(slice_, changes)


def test_commit_without_reply_is_reported_and_not_applied(private_redis: PrivateRedis) -> None:
    storage = RedisStorageBackend("paused", url=private_redis.url, socket_timeout=0.3)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_x": {"after": ["a", "b"], "run": PASS}})
    before = storage._read_session()

    paused = PausingStorage("paused", url=private_redis.url, socket_timeout=0.3)
    paused.admin = redis_mod.Redis(port=private_redis.port)
    with pytest.raises(StorageUnavailableError, match="it was not applied"):
        TriggerManager(paused).fire("a", {"n": 1})
    paused.admin.execute_command("CLIENT", "UNPAUSE")
    paused.admin.close()
    after = storage._read_session()
    assert (after.version, after.to_json()) == (before.version, before.to_json())


def test_a_commit_whose_reply_was_lost_is_recognised_by_its_token(raw: Any, prefix: str) -> None:
    storage = make("token", prefix=prefix)
    TriggerManager(storage).fire("a", {})
    token, version = raw.hmget(storage.keys[0], "commit", "version")
    lost = redis_mod.TimeoutError("reply lost")
    assert storage._committed_version(token, lost) == version
    with pytest.raises(StorageUnavailableError, match="it was not applied"):
        storage._committed_version("another-token", lost)


def test_unix_socket_url(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path, unixsocket=True)
    server.start()
    try:
        url = f"unix://{server.socket_path}?db=2"
        storage = RedisStorageBackend("unix", url=url)
        TriggerManager(storage).fire("a", {"n": 1})
        rebuilt = storage_backends.get("redis", "unix", **storage.options())
        assert rebuilt.latest_kwargs == {"a": {"n": 1}}
        assert RedisStorageBackend.list_sessions(url=url) == ["unix"]
    finally:
        server.stop()


def test_password_from_url_or_worker_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    monkeypatch.delenv("TRIGGERS_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("TRIGGERS_REDIS_URL", raising=False)
    server = PrivateRedis(tmp_path, password="s3cret-pw")
    server.start()
    try:
        url = server.url.replace("redis://", "redis://:s3cret-pw@", 1)
        storage = RedisStorageBackend("auth", url=url, connect_timeout=1.0)
        TriggerManager(storage).fire("a", {"n": 1})
        options = storage.options()
        assert "s3cret-pw" not in json.dumps(options)

        # A worker without the password cannot connect, and says why.
        with pytest.raises(StorageUnavailableError, match="uthenticat") as info:
            len(RedisStorageBackend("auth", **options))
        assert "s3cret-pw" not in str(info.value)
        wrong = server.url.replace("redis://", "redis://:wrong-pw@", 1)
        with pytest.raises(StorageUnavailableError) as info:
            len(RedisStorageBackend("auth", url=wrong, connect_timeout=1.0))
        assert "wrong-pw" not in str(info.value)

        # With the password in its own environment it sees the same session.
        monkeypatch.setenv("TRIGGERS_REDIS_PASSWORD", "s3cret-pw")
        assert RedisStorageBackend("auth", **options).latest_kwargs == {"a": {"n": 1}}
        monkeypatch.delenv("TRIGGERS_REDIS_PASSWORD")
        monkeypatch.setenv("TRIGGERS_REDIS_URL", url)
        assert RedisStorageBackend("auth", **options).latest_kwargs == {"a": {"n": 1}}
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Names and contention
# ---------------------------------------------------------------------------
def test_non_ascii_names_round_trip(prefix: str) -> None:
    uid = "sessión/😀:1"
    storage = make(uid, prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration({"t_é😀": {"after": ["a/é", "b😀"], "run": PASS}})
    with threading_runner():
        manager.fire("a/é", {"text": "ü😀\u0000"})
        assert [i.name for i in manager.fire("b😀", {})] == ["t_é😀#0"]
        ThreadingTaskRunner.join_all(timeout=30)
    storage.invalidate_cache()
    assert storage["t_é😀#0"].metadata["result"] == {
        "kwargs": {"a/é": {"text": "ü😀\u0000"}, "b😀": {}}
    }
    assert RedisStorageBackend.list_sessions(url=REDIS_URL, prefix=prefix) == [uid]


def test_threads_firing_into_one_session_never_lose_an_instance(prefix: str) -> None:
    import threading

    uid = "contended"
    make(uid, prefix=prefix)  # cleanup by prefix
    TriggerManager(make(uid, prefix=prefix)).update_configuration(
        {"t_each": {"after": [], "andEvery": "e", "run": DEVNULL}}
    )
    threads, fires = 6, 25
    scheduled: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def fire_many(n: int) -> None:
        try:
            manager = TriggerManager(make(uid, prefix=prefix))
            barrier.wait(timeout=30)
            for i in range(fires):
                scheduled.extend(x.name for x in manager.fire("e", {"thread": n, "i": i}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with threading_runner():
        workers = [threading.Thread(target=fire_many, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        ThreadingTaskRunner.join_all(timeout=60)
    assert not errors, errors
    expected = {f"t_each#{n}" for n in range(threads * fires)}
    assert sorted(scheduled) == sorted(expected)  # each dispatched exactly once
    storage = make(uid, prefix=prefix)
    assert {i.name: i.status for i in storage} == {name: "finished" for name in expected}
    assert storage.metadata["counters"] == {"t_each": threads * fires}


def test_large_configurations_and_commits_are_chunked(prefix: str) -> None:
    """Thousands of tasks in one update, thousands of instances in one save."""
    storage = make("large", prefix=prefix)
    manager = TriggerManager(storage)
    tasks = {f"t_{n:04d}": {"after": ["go", f"own-{n}"], "run": DEVNULL} for n in range(3000)}
    manager.update_configuration(tasks)
    assert manager.fire("go", {}) == []
    slice_ = storage._read_slice(frozenset({"go"}), frozenset())
    assert len(slice_.tasks) == 3000 and len(slice_.instances) == 3000
    assert set(slice_.latest_kwargs) == {"go"}
    # Reconfigure them all away from "go": the index follows.
    manager.update_configuration({name: {"after": ["other"], "run": DEVNULL} for name in tasks})
    assert storage._read_slice(frozenset({"go"}), frozenset()).tasks == {}
    with storage.acquire_lock():
        for instance in list(storage):
            instance.status = "abandoned"
            storage[instance.name] = instance
        storage.save()
    assert storage._read_slice(frozenset({"other"}), frozenset()).instances == {}


def _planned(storage: Any, trigger: str) -> tuple[Any, Any]:
    """Read a slice and plan a fire on it, without committing (an open step)."""
    from triggers.engine import Step

    slice_ = storage._read_slice(frozenset({trigger}), frozenset())
    step = Step(slice_, time.time())
    step.fire(trigger, {"by": "open step"})
    return slice_, step.changes


def test_steps_on_disjoint_tasks_of_one_session_do_not_conflict(prefix: str) -> None:
    from triggers.storages.base import StepConflict

    storage = make("fine", prefix=prefix)
    manager = TriggerManager(storage)
    manager.update_configuration(
        {
            "t_one": {"after": ["x", "shared"], "run": DEVNULL},
            "t_two": {"after": ["y", "shared"], "run": DEVNULL},
        }
    )
    other = TriggerManager(make("fine", prefix=prefix))

    with threading_runner():
        slice_, changes = _planned(storage, "x")
        other.fire("y", {})  # touches t_two only
        other.fire("unused", {})  # touches no task
        storage._write_changes(slice_, changes)  # commits: nothing it read changed

        slice_, changes = _planned(storage, "x")
        other.fire("shared", {})  # touches t_one too
        with pytest.raises(StepConflict):
            storage._write_changes(slice_, changes)

        slice_, changes = _planned(storage, "x")
        other.update_configuration({"t_one": {"after": ["x", "z"], "run": DEVNULL}})
        with pytest.raises(StepConflict):
            storage._write_changes(slice_, changes)

        slice_, changes = _planned(storage, "x")
        with make("fine", prefix=prefix).acquire_lock() as locked:  # a whole-session change
            locked.create_instance("t_two")
            locked.save()
        with pytest.raises(StepConflict):
            storage._write_changes(slice_, changes)

        ThreadingTaskRunner.join_all(timeout=30)
    storage.invalidate_cache()
    assert storage["t_one#0"].kwargs == {"x": {"by": "open step"}, "shared": {}}
    assert storage["t_one#0"].status == "finished"
    assert sorted(i.name for i in storage) == ["t_one#0", "t_two#0", "t_two#1"]


def test_a_fire_that_changes_nothing_still_conflicts_with_readers_of_its_kwargs(
    prefix: str,
) -> None:
    """A new instance takes the latest kwargs of its other triggers: a concurrent
    fire of one of them must not be lost, even when it changed no instance."""
    from triggers.storages.base import StepConflict

    storage = make("kwargs-readers", prefix=prefix)
    manager = TriggerManager(storage)
    with threading_runner():
        manager.update_configuration({"t_row": {"after": [], "andEvery": "row", "run": DEVNULL}})
        manager.fire("row", {"n": 0})  # t_row#0 runs at once
        ThreadingTaskRunner.join_all(timeout=30)
        manager.update_configuration(
            {"t_row": {"after": ["late"], "andEvery": "row", "run": DEVNULL}}
        )
        slice_, changes = _planned(storage, "row")  # t_row#1, waiting for "late"
        assert changes.instances["t_row#1"].status == "unstarted"
        # "late" finds no unstarted instance of t_row: it changes no instance.
        assert TriggerManager(make("kwargs-readers", prefix=prefix)).fire("late", {}) == []
        with pytest.raises(StepConflict):
            storage._write_changes(slice_, changes)
        # Retried from a fresh read, the new instance has "late" and runs.
        assert [i.name for i in manager.fire("row", {"n": 1})] == ["t_row#1"]
        ThreadingTaskRunner.join_all(timeout=30)


# ---------------------------------------------------------------------------
# A repeated step reuses its slice (one round trip) only while it is exact
# ---------------------------------------------------------------------------
class _Recorder(BaseTaskRunner):
    """Records dispatches; runs nothing (instances stay scheduled)."""

    def check(self, manager: Any, task_instance: Any) -> None:
        pass

    def run(self, manager: Any, task_instance: Any) -> None:
        pass


class _RecordingManager(TriggerManager):
    default_task_runner_name = "redis-test-record"


@pytest.fixture
def recording_runner() -> Iterator[None]:
    task_runners.register("redis-test-record", _Recorder)
    yield
    task_runners.unregister("redis-test-record")


def _as_data(slice_: Any) -> dict[str, Any]:
    return {
        "tasks": {n: c.to_dict() for n, c in slice_.tasks.items()},
        "instances": {n: i.to_dict() for n, i in slice_.instances.items()},
        "latest": slice_.latest_kwargs,
        "counters": slice_.counters,
    }


def test_a_kept_slice_always_equals_a_fresh_read(
    raw: Any, prefix: str, recording_runner: None
) -> None:
    import random

    rng = random.Random(20261128)
    storage = make("kept", prefix=prefix)
    manager = _RecordingManager(storage)
    manager.update_configuration(
        {
            "t_join": {"after": ["a", "b"], "unless": ["u"], "run": DEVNULL},
            "t_rows": {"after": ["a"], "andEvery": "row", "run": DEVNULL},
            "t_waiting": {"after": ["row", "never"], "andEvery": "a", "run": DEVNULL},
            "t_chain": {"after": ["t_rows"], "run": DEVNULL},
        }
    )
    reused = 0
    for n in range(120):
        if rng.random() < 0.25 and (
            scheduled := [
                i.name for i in storage.get_unresolved_instances() if i.status == "scheduled"
            ]
        ):
            name = rng.choice(scheduled)
            manager.update_instance_status(name, "finished", cascade=rng.random() < 0.5)
        else:
            manager.fire(rng.choice(["a", "b", "u", "row", "row", "row", "x"]), {"n": n})
        kept = storage._local_state.kept
        if kept is None:
            continue
        reused += 1
        assert str(kept.session) == raw.hget(storage.keys[0], "version")
        rebuilt = _as_data(kept.slice())
        storage._local_state.kept = None
        fresh = _as_data(storage._read_slice(*kept.key))
        assert rebuilt == fresh, f"step {n}: {kept.key}"
        storage._local_state.kept = kept
    assert reused > 50

    # A write by someone else makes the kept slice conflict; the step is redone.
    manager.fire("row", {"n": "before"})
    assert storage._local_state.kept is not None
    TriggerManager(make("kept", prefix=prefix)).fire("x", {})
    counters = storage.metadata["counters"]["t_rows"]
    assert [i.name for i in manager.fire("row", {"n": "after"})] == [f"t_rows#{counters}"]
    storage.invalidate_cache()
    assert storage.latest_kwargs["row"] == {"n": "after"}
