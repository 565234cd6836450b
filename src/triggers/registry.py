"""Class registries keyed by name, filled from entry points and at run time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from threading import RLock
from typing import Any, Generic, TypeVar, overload

from triggers.exceptions import TriggersError

T = TypeVar("T")

__all__ = ["ClassRegistry", "RegistryKeyError", "MissingDependencyError"]


class RegistryKeyError(TriggersError, KeyError):
    """No class is registered under a key."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class MissingDependencyError(TriggersError, ImportError):
    """A registered class needs a package that is not installed."""


class ClassRegistry(Generic[T]):
    """Looks classes up by key and instantiates them with the remaining arguments.

    Built-in and third-party classes come from the entry-point ``group``; run-time
    registrations (``register``) take precedence and can be removed again.
    """

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._registered: dict[str, type[T]] = {}  # run-time registrations
        self._loaded: dict[str, type[T]] = {}  # entry points already imported
        self._hidden: set[str] = set()  # entry points removed with unregister()
        self._entry_points: dict[str, Any] | None = None
        self._lock = RLock()

    def _eps(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return {k: ep for k, ep in self._entry_points.items() if k not in self._hidden}

    @overload
    def register(self, key: str) -> Callable[[type[T]], type[T]]: ...

    @overload
    def register(self, key: str, cls: type[T]) -> type[T]: ...

    def register(self, key: str, cls: type[T] | None = None) -> Any:
        """Register ``cls`` under ``key`` (it takes precedence over an entry point of
        the same name); usable as a class decorator."""
        if cls is None:
            return lambda c: self.register(key, c)
        with self._lock:
            self._registered[key] = cls
        return cls

    def unregister(self, key: str) -> None:
        """Remove the run-time registration under ``key``; an entry point of the same
        name it overrode is visible again. Without a run-time registration, hide the
        entry point itself. Unknown keys are ignored."""
        with self._lock:
            if self._registered.pop(key, None) is None:
                self._hidden.add(key)

    def get_class(self, key: str) -> type[T]:
        with self._lock:
            if key in self._registered:
                return self._registered[key]
            ep = self._eps().get(key)
            if ep is None:
                raise RegistryKeyError(
                    f"no {self.kind} is registered under {key!r}; "
                    f"expected one of {sorted(self.keys())}"
                )
            if key not in self._loaded:
                try:
                    self._loaded[key] = ep.load()
                except ImportError as exc:
                    raise MissingDependencyError(
                        f"the {self.kind} {key!r} ({ep.value}) cannot be imported: {exc}. "
                        f"If it comes with an extra, install it, e.g. pip install 'triggers[{key}]'"
                    ) from exc
            return self._loaded[key]

    def get(self, key: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``key`` with the remaining arguments."""
        return self.get_class(key)(*args, **kwargs)

    def key_of(self, cls: type) -> str | None:
        """The key a class is registered under (most derived match), if any."""
        with self._lock:
            for key, registered in self._registered.items():
                if registered is cls:
                    return key
            for key, ep in self._eps().items():
                if key in self._registered:  # overridden at run time
                    continue
                if self._loaded.get(key) is cls or (
                    ep.value.replace(":", ".") == f"{cls.__module__}.{cls.__qualname__}"
                ):
                    return key
        return None

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(set(self._registered) | set(self._eps()))

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
