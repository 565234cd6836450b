"""Class registries keyed by name, filled from entry points and at run time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from threading import RLock
from typing import Any, Generic, TypeVar, overload

from triggers.exceptions import TriggersError

T = TypeVar("T")

__all__ = ["ClassRegistry", "RegistryKeyError"]


class RegistryKeyError(TriggersError, KeyError):
    """No class is registered under a key."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class ClassRegistry(Generic[T]):
    """Looks classes up by key and instantiates them with the remaining arguments.

    Built-in and third-party classes come from the entry-point ``group``; run-time
    registrations (``register``) take precedence and can be removed again.
    """

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._classes: dict[str, type[T]] = {}
        self._entry_points: dict[str, Any] | None = None
        self._lock = RLock()

    def _eps(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    @overload
    def register(self, key: str) -> Callable[[type[T]], type[T]]: ...

    @overload
    def register(self, key: str, cls: type[T]) -> type[T]: ...

    def register(self, key: str, cls: type[T] | None = None) -> Any:
        """Register ``cls`` under ``key``; usable as a class decorator."""
        if cls is None:
            return lambda c: self.register(key, c)
        with self._lock:
            self._classes[key] = cls
        return cls

    def unregister(self, key: str) -> None:
        with self._lock:
            self._classes.pop(key, None)
            if self._entry_points is not None:
                self._entry_points.pop(key, None)

    def get_class(self, key: str) -> type[T]:
        with self._lock:
            if key in self._classes:
                return self._classes[key]
            ep = self._eps().get(key)
            if ep is None:
                raise RegistryKeyError(
                    f"no {self.kind} is registered under {key!r}; "
                    f"expected one of {sorted(self.keys())}"
                )
            cls = ep.load()
            self._classes[key] = cls
            return cls

    def get(self, key: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``key`` with the remaining arguments."""
        return self.get_class(key)(*args, **kwargs)

    def key_of(self, cls: type) -> str | None:
        """The key a class is registered under (most derived match), if any."""
        with self._lock:
            for key, registered in self._classes.items():
                if registered is cls:
                    return key
            for key, ep in self._eps().items():
                if ep.value.replace(":", ".") == f"{cls.__module__}.{cls.__qualname__}":
                    return key
        return None

    def keys(self) -> list[str]:
        return sorted(set(self._classes) | set(self._eps()))

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
