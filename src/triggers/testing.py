"""Testing toolbox: a unittest mixin, sample tasks and ``name_matches_classpath``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pprint import pformat
from typing import Any, TypeVar

from triggers.manager import TriggerManager, _runner_substitutes
from triggers.task import TaskContext, TriggerTask
from triggers.types import (
    STATUS_ABANDONED,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_REPLAYED,
    STATUS_SKIPPED,
    STATUS_UNSTARTED,
    TaskInstance,
)

__all__ = [
    "TriggerManagerTestCaseMixin",
    "PassThruTask",
    "DevNullTask",
    "FailingTask",
    "SelfSkippingTask",
    "SelfRetryingTask",
    "name_matches_classpath",
    "threading_runner",
    "describe_instance",
]

T = TypeVar("T", bound=type)


def name_matches_classpath(cls: T) -> T:
    """Class decorator: set a task's Celery name to its Python path (``module.Class``)."""
    cls.name = f"{cls.__module__}.{cls.__qualname__}"  # type: ignore[attr-defined]
    return cls


@contextmanager
def threading_runner() -> Iterator[None]:
    """Within the block, tasks that would go to Celery run on ThreadingTaskRunner."""
    previous = _runner_substitutes.get("celery")
    _runner_substitutes["celery"] = "threading"
    try:
        yield
    finally:
        if previous is None:
            _runner_substitutes.pop("celery", None)
        else:
            _runner_substitutes["celery"] = previous


def describe_instance(instance: TaskInstance) -> str:
    return (
        f"{instance.name} is {instance.status!r}; kwargs={pformat(instance.kwargs)}\n"
        f"metadata:\n{pformat(instance.metadata)}\n"
        + (instance.metadata.get("exceptionInfo") or "")
    )


@name_matches_classpath
class PassThruTask(TriggerTask):
    """Returns its trigger kwargs: ``{'kwargs': trigger_kwargs}``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        return {"kwargs": context.trigger_kwargs}


@name_matches_classpath
class DevNullTask(TriggerTask):
    """Does nothing; returns ``{}``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        return {}


@name_matches_classpath
class FailingTask(TriggerTask):
    """Always raises ``RuntimeError``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        raise RuntimeError(f"{context.task_instance.name} failed on purpose")


@name_matches_classpath
class SelfSkippingTask(TriggerTask):
    """Skips itself with ``{'kwargs': trigger_kwargs}`` as metadata."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        raise self.skip({"kwargs": context.trigger_kwargs})


@name_matches_classpath
class SelfRetryingTask(TriggerTask):
    """Retries while its retry count is below ``trigger_kwargs['retries']['max']``
    (default: its ``max_retries``); then returns ``{'count': retries}``."""

    def _run(self, context: TaskContext) -> Mapping[str, Any]:
        retries = context.task_instance.depth
        settings = context.trigger_kwargs.get("retries") or {}
        limit = settings.get("max", self.max_retries)
        if limit is None or retries < limit:
            raise self.retry(cooldown=settings.get("cooldown"))
        return {"count": retries}


class TriggerManagerTestCaseMixin:
    """Mixin for ``unittest.TestCase``: threads instead of Celery, and assertions.

    Set ``self.manager`` in ``setUp``; the assertions read its storage (they
    wait for running threads first, see :meth:`join_tasks`).
    """

    manager: TriggerManager

    #: Forget every in-memory session before each test, so tests that reuse a
    #: session uid on the ``memory`` backend start from an empty session.
    clear_memory_sessions = True

    def setUp(self) -> None:
        if self.clear_memory_sessions:
            from triggers.storages.memory import MemoryStorageBackend

            MemoryStorageBackend.clear_all()
        self._triggers_runner = threading_runner()
        self._triggers_runner.__enter__()
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        try:
            self.join_tasks()
        finally:
            self._triggers_runner.__exit__(None, None, None)
        super().tearDown()  # type: ignore[misc]

    def join_tasks(self) -> None:
        from triggers.runners.threading import ThreadingTaskRunner

        ThreadingTaskRunner.join_all()

    # --- helpers -------------------------------------------------------------
    def _instances(self) -> dict[str, TaskInstance]:
        self.join_tasks()
        self.manager.storage.invalidate_cache()
        return self.manager.storage.instances

    def _get(self, instance_name: str) -> TaskInstance:
        instances = self._instances()
        if instance_name not in instances:
            self.fail(  # type: ignore[attr-defined]
                f"task instance {instance_name!r} does not exist; "
                f"the session has {sorted(instances)}"
            )
        return instances[instance_name]

    def _assert_status(self, instance_name: str, status: str) -> TaskInstance:
        instance = self._get(instance_name)
        if instance.status != status:
            self.fail(  # type: ignore[attr-defined]
                f"expected {instance_name} to be {status!r}.\n{describe_instance(instance)}"
            )
        return instance

    # --- assertions ------------------------------------------------------------
    def assertInstanceAbandoned(self, instance_name: str) -> TaskInstance:
        return self._assert_status(instance_name, STATUS_ABANDONED)

    def assertInstanceFailed(
        self, instance_name: str, exc_type: type[BaseException]
    ) -> TaskInstance:
        instance = self._assert_status(instance_name, STATUS_FAILED)
        expected = f"{exc_type.__module__}.{exc_type.__qualname__}"
        actual = instance.metadata.get("exceptionType")
        if actual != expected:
            self.fail(  # type: ignore[attr-defined]
                f"expected {instance_name} to fail with {expected}, it failed with {actual}.\n"
                f"{describe_instance(instance)}"
            )
        return instance

    def assertInstanceFinished(
        self, instance_name: str, expected_result: Mapping[str, Any] | None = None
    ) -> TaskInstance:
        instance = self._assert_status(instance_name, STATUS_FINISHED)
        if expected_result is not None:
            self.assertDictEqual(  # type: ignore[attr-defined]
                dict(instance.metadata.get("result") or {}),
                dict(expected_result),
                f"unexpected result of {instance_name}.\n{describe_instance(instance)}",
            )
        return instance

    def assertInstanceMissing(self, instance_name: str) -> None:
        instances = self._instances()
        if instance_name in instances:
            self.fail(  # type: ignore[attr-defined]
                f"expected no instance {instance_name!r}, found one.\n"
                f"{describe_instance(instances[instance_name])}"
            )

    def assertInstanceReplayed(self, instance_name: str) -> TaskInstance:
        return self._assert_status(instance_name, STATUS_REPLAYED)

    def assertInstanceSkipped(self, instance_name: str) -> TaskInstance:
        return self._assert_status(instance_name, STATUS_SKIPPED)

    def assertInstanceUnstarted(self, instance_name: str) -> TaskInstance:
        return self._assert_status(instance_name, STATUS_UNSTARTED)

    def assertUnresolvedTasks(self, names: list[str]) -> None:
        self.join_tasks()
        self.manager.storage.invalidate_cache()
        storage = self.manager.storage
        actual = sorted(t.name for t in storage.get_unresolved_tasks())
        details = "\n".join(describe_instance(i) for i in storage.get_unresolved_instances())
        self.assertListEqual(  # type: ignore[attr-defined]
            actual,
            sorted(names),
            f"unexpected unresolved tasks; unresolved instances:\n{details or '(none)'}",
        )

    def assertUnresolvedInstances(self, names: list[str]) -> None:
        self.join_tasks()
        self.manager.storage.invalidate_cache()
        unresolved = self.manager.storage.get_unresolved_instances()
        actual = sorted(i.name for i in unresolved)
        if actual != sorted(names):
            details = "\n".join(describe_instance(i) for i in unresolved)
            self.fail(  # type: ignore[attr-defined]
                f"unresolved instances are {actual}, expected {sorted(names)}\n{details}"
            )
