"""Triggers: run Celery tasks when sets of events have fired inside a session."""

from __future__ import annotations

from typing import Any

from triggers.manager import TriggerManager
from triggers.task import TaskContext, TriggerTask

__version__ = "0.1.0"

__all__ = [
    "TriggerManager",
    "TriggerTask",
    "TaskContext",
    "MemoryStorageBackend",
    "SqliteStorageBackend",
    "RedisStorageBackend",
    "PostgresStorageBackend",
    "CacheStorageBackend",
]


def __getattr__(name: str) -> Any:
    import triggers.storages as storages

    if name in storages._LAZY:
        return getattr(storages, name)
    raise AttributeError(f"module 'triggers' has no attribute {name!r}")
