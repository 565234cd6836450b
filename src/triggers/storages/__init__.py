"""Storage backends (registry ``storage_backends``; entry-point group ``triggers.storages``)."""

from __future__ import annotations

from typing import Any

from triggers.storages.base import BaseTriggerStorage, storage_backends

__all__ = [
    "BaseTriggerStorage",
    "storage_backends",
    "MemoryStorageBackend",
    "SqliteStorageBackend",
    "RedisStorageBackend",
    "PostgresStorageBackend",
    "CacheStorageBackend",
]

_LAZY = {
    "MemoryStorageBackend": "triggers.storages.memory",
    "SqliteStorageBackend": "triggers.storages.sqlite",
    "RedisStorageBackend": "triggers.storages.redis",
    "PostgresStorageBackend": "triggers.storages.postgres",
    "CacheStorageBackend": "triggers.storages.cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'triggers.storages' has no attribute {name!r}")
