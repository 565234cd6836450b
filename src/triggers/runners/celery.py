"""Send trigger tasks to Celery workers through the broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from triggers.exceptions import DispatchError, TaskNotFoundError
from triggers.runners.base import BaseTaskRunner, build_message

if TYPE_CHECKING:
    from triggers.manager import TriggerManager
    from triggers.task import TriggerTask
    from triggers.types import TaskInstance

__all__ = ["CeleryTaskRunner"]


class CeleryTaskRunner(BaseTaskRunner):
    """Publishes each scheduled instance as a Celery task message (JSON only).

    The message carries registry keys, the session uid and the storage's
    non-secret options, so a worker rebuilds the same manager and storage.
    ``cooldown`` becomes the countdown; routing (queues, routes, priorities)
    is Celery's, as for any task.
    """

    def resolve(self, task_instance: TaskInstance) -> TriggerTask:
        task = super().resolve(task_instance)
        run = task_instance.config.run
        try:
            registered = task.app.tasks.get(task.name)
        except RuntimeError:
            registered = None
        if registered is None:
            raise TaskNotFoundError(
                f"task {task_instance.config.name!r}: run={run!r} is not registered on the "
                f"Celery app {task.app.main!r}; workers could not run it "
                "(register it with app.register_task() or @app.task(base=TriggerTask))"
            )
        return task

    def check(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        task = self.resolve(task_instance)
        if task.app.conf.task_always_eager:
            raise DispatchError(
                f"task {task_instance.config.name!r}: Celery's task_always_eager is on; the "
                "Celery runner refuses eager mode because the task would run inside the atomic "
                "step that schedules it. Use the 'threading' runner for tests and scripts."
            )
        from triggers.manager import trigger_managers

        if trigger_managers.key_of(type(manager)) is None:
            raise DispatchError(
                f"manager class {type(manager).__qualname__} is not registered in "
                "trigger_managers; register it so workers can rebuild it"
            )

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        self.check(manager, task_instance)
        task = self.resolve(task_instance)
        message = build_message(manager, task_instance)
        task.apply_async(
            kwargs=message,
            countdown=task_instance.cooldown or None,
            serializer="json",
        )
