"""Registries of managers, storages and runners (SPEC section 2)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest

from sample_tasks import PirateTriggerManager
from triggers.exceptions import TriggersError
from triggers.manager import TriggerManager, trigger_managers
from triggers.registry import ClassRegistry, RegistryKeyError
from triggers.runners import CeleryTaskRunner, ThreadingTaskRunner, task_runners
from triggers.storages import BaseTriggerStorage, storage_backends
from triggers.storages.memory import MemoryStorageBackend
from triggers.storages.sqlite import SqliteStorageBackend

BUILT_INS = {
    "triggers.managers": {"default"},
    "triggers.storages": {"memory", "sqlite", "redis", "postgres", "cache"},
    "triggers.runners": {"celery", "threading"},
}


@pytest.mark.parametrize("group", sorted(BUILT_INS))
def test_entry_points_present_for_built_ins(group: str) -> None:
    names = {ep.name for ep in entry_points(group=group)}
    assert BUILT_INS[group] <= names
    registry = {
        "triggers.managers": trigger_managers,
        "triggers.storages": storage_backends,
        "triggers.runners": task_runners,
    }[group]
    assert BUILT_INS[group] <= set(registry.keys())
    for key in BUILT_INS[group]:
        assert key in registry


def test_get_instantiates_with_the_remaining_arguments(tmp_path: Any) -> None:
    storage = storage_backends.get("sqlite", uid="abc", path=str(tmp_path / "x.sqlite3"))
    assert isinstance(storage, SqliteStorageBackend)
    assert storage.uid == "abc"
    assert storage.path == str(tmp_path / "x.sqlite3")
    assert storage.options()["path"] == storage.path
    manager = trigger_managers.get("default", storage=storage)
    assert type(manager) is TriggerManager
    assert manager.storage is storage
    memory = storage_backends.get("memory", "abc")
    assert isinstance(memory, MemoryStorageBackend) and isinstance(memory, BaseTriggerStorage)
    assert isinstance(task_runners.get("threading"), ThreadingTaskRunner)
    assert task_runners.get_class("celery") is CeleryTaskRunner


def test_key_of_built_ins() -> None:
    assert trigger_managers.key_of(TriggerManager) == "default"
    assert storage_backends.key_of(SqliteStorageBackend) == "sqlite"
    assert storage_backends.key_of(MemoryStorageBackend) == "memory"
    assert task_runners.key_of(ThreadingTaskRunner) == "threading"
    assert trigger_managers.key_of(PirateTriggerManager) is None


def test_register_and_unregister() -> None:
    returned = trigger_managers.register("pirate", PirateTriggerManager)
    try:
        assert returned is PirateTriggerManager
        assert "pirate" in trigger_managers
        assert trigger_managers.key_of(PirateTriggerManager) == "pirate"
        manager = trigger_managers.get("pirate", MemoryStorageBackend("reg-test"))
        assert type(manager) is PirateTriggerManager
    finally:
        trigger_managers.unregister("pirate")
    assert "pirate" not in trigger_managers
    assert trigger_managers.key_of(PirateTriggerManager) is None
    with pytest.raises(KeyError) as info:
        trigger_managers.get("pirate", MemoryStorageBackend("reg-test"))
    error = info.value
    assert isinstance(error, RegistryKeyError) and isinstance(error, TriggersError)
    assert str(error).startswith(
        "no trigger manager is registered under 'pirate'; expected one of ['default'"
    )


def test_register_as_decorator() -> None:
    @trigger_managers.register("decorated")
    class Decorated(TriggerManager):
        pass

    try:
        assert Decorated.__name__ == "Decorated"  # the decorator returns the class
        assert trigger_managers.get_class("decorated") is Decorated
    finally:
        trigger_managers.unregister("decorated")
    assert "decorated" not in trigger_managers


def test_run_time_registration_overrides_and_unregister_restores_built_in() -> None:
    class Special(MemoryStorageBackend):
        pass

    storage_backends.register("memory", Special)
    try:
        assert type(storage_backends.get("memory", "x")) is Special
        assert storage_backends.key_of(Special) == "memory"
        # The built-in is overridden: workers would rebuild Special for "memory".
        assert storage_backends.key_of(MemoryStorageBackend) is None
    finally:
        storage_backends.unregister("memory")
    assert type(storage_backends.get("memory", "x")) is MemoryStorageBackend
    assert storage_backends.key_of(MemoryStorageBackend) == "memory"


def test_unregister_hides_an_entry_point_in_a_private_registry() -> None:
    registry: ClassRegistry[Any] = ClassRegistry("triggers.runners", "task runner")
    assert registry.get_class("threading") is ThreadingTaskRunner
    registry.unregister("threading")
    assert "threading" not in registry
    with pytest.raises(RegistryKeyError, match="'threading'"):
        registry.get_class("threading")
    registry.unregister("never-registered")  # ignored
    # The shared registry is untouched.
    assert "threading" in task_runners


def test_unknown_keys_list_what_is_available() -> None:
    with pytest.raises(KeyError) as info:
        storage_backends.get("nosql", "x")
    message = str(info.value)
    assert "'nosql'" in message and "'sqlite'" in message and "storage backend" in message
    with pytest.raises(KeyError, match="task runner"):
        task_runners.get("carrier-pigeon")
