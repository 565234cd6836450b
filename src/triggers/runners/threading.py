"""Run trigger tasks in threads of this process: no broker needed."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, ClassVar

from triggers.runners.base import BaseTaskRunner, build_message

if TYPE_CHECKING:
    from triggers.manager import TriggerManager
    from triggers.types import TaskInstance

__all__ = ["ThreadingTaskRunner"]

log = logging.getLogger(__name__)


class ThreadingTaskRunner(BaseTaskRunner):
    """Runs each scheduled instance in a new thread (after its ``cooldown``).

    All instances of the class share one set of threads, so
    ``ThreadingTaskRunner.join_all()`` waits for everything started so far,
    including cascades started by running tasks.
    """

    _threads: ClassVar[set[threading.Thread]] = set()
    _cond: ClassVar[threading.Condition] = threading.Condition()
    _local: ClassVar[threading.local] = threading.local()

    def run(self, manager: TriggerManager, task_instance: TaskInstance) -> None:
        task = self.resolve(task_instance)
        message = build_message(manager, task_instance)
        manager_class = type(manager)
        cooldown = task_instance.cooldown or 0

        def target() -> None:
            type(self)._local.in_task = True
            try:
                if cooldown > 0:
                    time.sleep(cooldown)
                task.execute(message, manager_class=manager_class)
            except BaseException:  # recorded on the instance by the task protocol
                log.debug("task instance %s raised", task_instance.name, exc_info=True)
            finally:
                with self._cond:
                    self._threads.discard(threading.current_thread())
                    self._cond.notify_all()

        thread = threading.Thread(
            target=target, name=f"triggers:{task_instance.name}", daemon=True
        )
        with self._cond:
            self._threads.add(thread)
        thread.start()

    @classmethod
    def join_all(cls, timeout: float | None = None) -> None:
        """Wait until every task started by this runner (cascades too) has ended.

        Raises ``RuntimeError`` when called from a task thread (it would wait for
        itself) and ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        if getattr(cls._local, "in_task", False):
            raise RuntimeError(
                "ThreadingTaskRunner.join_all() called from a task thread: "
                "it would wait for itself"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with cls._cond:
            while cls._threads:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"{len(cls._threads)} task thread(s) still running after {timeout}s: "
                        + ", ".join(sorted(t.name for t in cls._threads))
                    )
                cls._cond.wait(remaining)
