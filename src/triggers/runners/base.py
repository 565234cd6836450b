"""Task runners: hand a scheduled task instance to something that executes it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triggers.engine import merge_kwargs
from triggers.exceptions import DispatchError
from triggers.registry import ClassRegistry

if TYPE_CHECKING:
    from triggers.manager import TriggerManager
    from triggers.task import TriggerTask
    from triggers.types import TaskInstance

__all__ = ["BaseTaskRunner", "task_runners", "DEFAULT_TASK_RUNNER", "build_message"]

#: The runner used when neither the task (``using``) nor the manager names one.
DEFAULT_TASK_RUNNER = "celery"


class BaseTaskRunner:
    """Executes scheduled task instances. Subclasses implement :meth:`run`."""

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        """Start ``task_instance`` (already ``scheduled`` and committed)."""
        raise NotImplementedError

    def resolve(self, task_instance: TaskInstance) -> TriggerTask:
        """The TriggerTask that runs ``task_instance``; raises TaskNotFoundError."""
        from triggers.task import resolve_task

        return resolve_task(task_instance.config.run, task_instance.config.name)

    def check(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        """Raise a :class:`DispatchError` if ``run`` could not start this instance.

        Called inside the atomic step, before anything is committed.
        """
        self.resolve(task_instance)


task_runners: ClassRegistry[BaseTaskRunner] = ClassRegistry("triggers.runners", "task runner")


def build_message(manager: TriggerManager, task_instance: TaskInstance) -> dict[str, Any]:
    """The JSON message that lets a worker rebuild the manager and run the instance.

    Carries registry keys, the session uid and the storage's non-secret options,
    never secrets.
    """
    from triggers.manager import trigger_managers
    from triggers.storages import storage_backends

    storage = manager.storage
    manager_key = trigger_managers.key_of(type(manager))
    storage_key = storage_backends.key_of(type(storage))
    if storage_key is None:
        raise DispatchError(
            f"storage class {type(storage).__qualname__} is not registered in storage_backends; "
            "register it so workers can rebuild it"
        )
    config = task_instance.config
    return {
        "manager": manager_key,
        "storage": storage_key,
        "storage_options": storage.options(),
        "uid": storage.uid,
        "instance": task_instance.name,
        "kwargs": merge_kwargs(config.with_params, task_instance.kwargs),
        "depth": task_instance.depth,
    }
