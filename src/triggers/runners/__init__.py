"""Task runners (registry ``task_runners``; entry-point group ``triggers.runners``)."""

from __future__ import annotations

from typing import Any

from triggers.runners.base import DEFAULT_TASK_RUNNER, BaseTaskRunner, build_message, task_runners

__all__ = [
    "BaseTaskRunner",
    "CeleryTaskRunner",
    "ThreadingTaskRunner",
    "DEFAULT_TASK_RUNNER",
    "task_runners",
    "build_message",
]


def __getattr__(name: str) -> Any:
    if name == "CeleryTaskRunner":
        from triggers.runners.celery import CeleryTaskRunner

        return CeleryTaskRunner
    if name == "ThreadingTaskRunner":
        from triggers.runners.threading import ThreadingTaskRunner

        return ThreadingTaskRunner
    raise AttributeError(f"module 'triggers.runners' has no attribute {name!r}")
