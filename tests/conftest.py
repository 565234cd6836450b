"""Shared fixtures: one storage contract, run against every backend.

Backends needing a service (Redis, PostgreSQL) skip with a reason when the
service is unreachable, except under CI (``CI=true``) where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from sample_tasks import HookRecordingManager
from triggers import TriggerManager
from triggers.runners.threading import ThreadingTaskRunner
from triggers.storages.base import BaseTriggerStorage
from triggers.testing import threading_runner

CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("TRIGGERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_DSN = os.environ.get(
    "TRIGGERS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["memory", "sqlite", "redis", "postgres", "cache"]

StorageFactory = Callable[..., BaseTriggerStorage]


def require_service(name: str, check: Callable[[], object]) -> None:
    """Skip (or, under CI, fail) when a service the test needs is unreachable."""
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        message = f"{name} is not reachable ({type(exc).__name__}: {exc})"
        if CI:
            pytest.fail(f"{message}; CI must have it running")
        pytest.skip(f"{message}; start it to run these tests")


def _redis_ping() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()


def _postgres_ping() -> None:
    import psycopg

    psycopg.connect(POSTGRES_DSN, connect_timeout=2).close()


def backend_options(backend: str, tmp_path: object) -> dict[str, object]:
    """Constructor options (besides the uid) for a backend under test."""
    if backend == "sqlite":
        return {"path": str(tmp_path) + "/triggers.sqlite3"}
    if backend == "redis":
        return {"url": REDIS_URL, "prefix": "triggers-test"}
    if backend == "postgres":
        return {"dsn": POSTGRES_DSN}
    return {}


def prepare_backend(backend: str) -> None:
    """Skip unless ``backend`` is implemented and its service reachable."""
    if backend == "redis":
        pytest.importorskip("triggers.storages.redis", reason="Redis backend not installed")
        require_service("Redis", _redis_ping)
    elif backend == "postgres":
        pytest.importorskip("triggers.storages.postgres", reason="PostgreSQL backend not installed")
        require_service("PostgreSQL", _postgres_ping)
    elif backend == "cache":
        pytest.importorskip("django", reason="the Django cache backend needs Django")
        configure_django()


def configure_django() -> None:
    """Django settings for the cache backend's tests: a process-local cache."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    prepare_backend(request.param)
    return str(request.param)


@pytest.fixture
def storage_factory(backend: str, tmp_path: object) -> Iterator[StorageFactory]:
    """Builds storages of the backend under test; each test gets fresh session uids."""
    from triggers.storages import storage_backends

    options = backend_options(backend, tmp_path)
    made: list[BaseTriggerStorage] = []

    def make(uid: str | None = None, **overrides: object) -> BaseTriggerStorage:
        storage = storage_backends.get(
            backend, uid or f"test-{uuid.uuid4().hex}", **{**options, **overrides}
        )
        made.append(storage)
        return storage

    yield make
    ThreadingTaskRunner.join_all(timeout=30)
    for storage in made:
        try:
            storage.delete_session()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


@pytest.fixture
def storage(storage_factory: StorageFactory) -> BaseTriggerStorage:
    return storage_factory()


@pytest.fixture
def manager(storage: BaseTriggerStorage) -> Iterator[TriggerManager]:
    """A manager on the backend under test, running tasks on threads."""
    with threading_runner():
        yield TriggerManager(storage)
        ThreadingTaskRunner.join_all(timeout=30)


@pytest.fixture
def hook_manager(storage: BaseTriggerStorage) -> Iterator[HookRecordingManager]:
    """A manager recording its hook calls (``HookRecordingManager.calls``)."""
    from sample_tasks import settle

    HookRecordingManager.calls.clear()
    with threading_runner():
        yield HookRecordingManager(storage)
        settle(TriggerManager(storage))
    HookRecordingManager.calls.clear()
