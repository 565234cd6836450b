"""Django cache storage, for projects migrating from the original library.

The whole session is one JSON document in a Django cache entry (as the original
library kept it, but JSON instead of pickle), guarded by a lock entry created
with ``cache.add`` and given a timeout, so a crashed process's lock expires by
itself. Every step reads and rewrites the whole document: prefer the ``redis``
or ``postgres`` backends for large sessions. Needs Django (``triggers[django]``)
and configured settings.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from triggers.exceptions import StorageError, StorageUnavailableError
from triggers.storages.base import BaseTriggerStorage
from triggers.storages.codec import dumps, loads

__all__ = ["CacheStorageBackend"]


class CacheStorageBackend(BaseTriggerStorage):
    """Sessions in a Django cache.

    :param uid: the session uid.
    :param cache: alias of the Django cache (``CACHES`` setting) to use.
    :param prefix: prefix of the cache keys.
    :param timeout: seconds a session is kept after its last change (None: forever).
    :param lock_timeout: seconds after which a lock left by a crashed process expires.
    :param lock_wait: seconds to wait for the lock before :class:`StorageUnavailableError`.
    """

    def __init__(
        self,
        uid: str,
        cache: str | None = None,
        prefix: str = "triggers",
        timeout: float | None = None,
        lock_timeout: float = 30.0,
        lock_wait: float = 30.0,
    ) -> None:
        super().__init__(uid)
        self.cache_alias = cache or os.environ.get("TRIGGERS_DJANGO_CACHE", "default")
        self.prefix = prefix
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.lock_wait = lock_wait

    def options(self) -> dict[str, Any]:
        return {
            "cache": self.cache_alias,
            "prefix": self.prefix,
            "timeout": self.timeout,
            "lock_timeout": self.lock_timeout,
            "lock_wait": self.lock_wait,
        }

    @property
    def cache(self) -> Any:
        try:
            from django.core.cache import caches
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise StorageError(
                "the 'cache' backend needs Django: pip install triggers[django]"
            ) from exc
        return caches[self.cache_alias]

    @property
    def key(self) -> str:
        return f"{self.prefix}:session:{self.uid}"

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if getattr(self._local, "held", False):  # re-entered by this thread
            yield
            return
        cache = self.cache
        lock_key = f"{self.key}:lock"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_wait
        delay = 0.001
        while not cache.add(lock_key, token, timeout=self.lock_timeout):
            if time.monotonic() > deadline:
                raise StorageUnavailableError(
                    f"session {self.uid!r}: cache lock {lock_key!r} still held after "
                    f"{self.lock_wait}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            if cache.get(lock_key) == token:
                cache.delete(lock_key)

    def _load_session(self) -> Mapping[str, Any] | None:
        text = self.cache.get(self.key)
        return None if text is None else loads(text)

    def _save_session(self, data: Mapping[str, Any]) -> None:
        self.cache.set(self.key, dumps(dict(data)), timeout=self.timeout)

    def delete_session(self) -> None:
        with self._transaction():
            self.cache.delete(self.key)
        self.invalidate_cache()
