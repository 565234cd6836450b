"""Child-process side of the concurrency stress test (imported by spawned processes)."""

from __future__ import annotations

import traceback
from typing import Any

from triggers import TriggerManager
from triggers.runners.base import BaseTaskRunner, task_runners
from triggers.storages import storage_backends

RUN = "triggers.testing.DevNullTask"
CONFIG = {
    "t_join": {"after": ["a", "b", "c"], "run": RUN},
    "t_every": {"after": ["a"], "andEvery": "e", "run": RUN},
    "t_chain": {"after": ["t_join", "d"], "run": RUN},
    "t_every_chain": {"after": [], "andEvery": "t_every", "run": RUN},
    "t_never": {"after": ["b"], "unless": ["x", "y"], "run": RUN},
    "t_race": {"after": ["c"], "unless": ["u"], "run": RUN},
}


class RecordingRunner(BaseTaskRunner):
    """Records every dispatch, then finishes the instance at once (cascading)."""

    dispatched: list[tuple[str, str]] = []

    def check(self, manager: Any, task_instance: Any) -> None:
        pass

    def run(self, manager: TriggerManager, task_instance: Any) -> None:
        RecordingRunner.dispatched.append((manager.storage.uid, task_instance.name))
        manager.update_instance_status(
            task_instance,
            "finished",
            {"result": {"by": task_instance.name}},
            cascade=True,
            cascade_kwargs={"by": task_instance.name},
        )


class StressManager(TriggerManager):
    default_task_runner_name = "stress-record"


def register() -> None:
    task_runners.register("stress-record", RecordingRunner)


def worker(
    backend: str,
    options: dict[str, Any],
    firings: list[tuple[str, str, dict[str, Any]]],
    barrier: Any,
    out: Any,
) -> None:
    """Fire ``firings`` (uid, trigger, kwargs) in order; report dispatches and errors."""
    register()
    errors: list[str] = []
    managers: dict[str, StressManager] = {}
    try:
        barrier.wait(60)
        for uid, trigger, kwargs in firings:
            manager = managers.get(uid)
            if manager is None:
                manager = managers[uid] = StressManager(
                    storage_backends.get(backend, uid, **options)
                )
            manager.fire(trigger, kwargs)
    except Exception:  # noqa: BLE001 - reported to the parent
        errors.append(traceback.format_exc())
    out.put((RecordingRunner.dispatched, len(firings), errors))
