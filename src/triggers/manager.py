"""The trigger manager: fires triggers and changes sessions through atomic steps."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from triggers.config import parse_configuration
from triggers.engine import Step
from triggers.exceptions import DispatchError, InvalidTriggerKwargs
from triggers.registry import ClassRegistry
from triggers.runners.base import DEFAULT_TASK_RUNNER, BaseTaskRunner, task_runners
from triggers.storages.base import BaseTriggerStorage
from triggers.storages.codec import dumps
from triggers.types import (
    META_ACTUAL_KWARGS,
    META_COOLDOWN,
    META_LOG_LEVEL,
    META_LOGS_RESOLVED,
    META_RESULT,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_RUNNING,
    STATUS_SCHEDULED,
    STATUSES,
    TaskConfig,
    TaskInstance,
    task_name_of,
)

if TYPE_CHECKING:
    from triggers.task import TriggerTask

__all__ = ["TriggerManager", "trigger_managers", "rebuild_manager"]

log = logging.getLogger(__name__)

trigger_managers: ClassRegistry[TriggerManager] = ClassRegistry(
    "triggers.managers", "trigger manager"
)

#: When set (by the testing tools), replaces the ``celery`` runner key everywhere.
_runner_substitutes: dict[str, str] = {}


def _check_kwargs(what: str, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise InvalidTriggerKwargs(
            f"{what}: kwargs must be a mapping (dict), got {type(kwargs).__name__}"
        )
    try:
        return json.loads(dumps(kwargs))
    except (TypeError, ValueError) as exc:
        raise InvalidTriggerKwargs(f"{what}: kwargs must be JSON-serializable ({exc})") from None


def _name(instance: str | TaskInstance) -> str:
    return instance.name if isinstance(instance, TaskInstance) else instance


class TriggerManager:
    """Fires triggers in one session and runs the trigger tasks that become ready.

    Every change is one atomic step on the storage; ready instances are marked
    ``scheduled`` in that step and handed to their runner after it commits.
    """

    #: Runner key for tasks without ``using`` (None: ``DEFAULT_TASK_RUNNER``).
    default_task_runner_name: ClassVar[str | None] = None

    def __init__(self, storage: BaseTriggerStorage) -> None:
        self.storage = storage
        self._runners: dict[str, BaseTaskRunner] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.storage!r}>"

    # ------------------------------------------------------------------
    # Configuration and firing
    # ------------------------------------------------------------------
    def update_configuration(self, configuration: Mapping[str, Any]) -> dict[str, TaskConfig]:
        """Add or replace trigger tasks (validated first; other tasks stay)."""
        tasks = parse_configuration(configuration)
        self.storage.run_step(lambda step: step.configure(tasks))
        return tasks

    def fire(
        self, trigger_name: str, trigger_kwargs: Mapping[str, Any] | None = None
    ) -> list[TaskInstance]:
        """Fire a trigger; returns the instances it scheduled (already dispatched)."""
        if not isinstance(trigger_name, str) or not trigger_name:
            raise ValueError(f"trigger name must be a non-empty string, got {trigger_name!r}")
        kwargs = _check_kwargs(f"trigger {trigger_name!r}", trigger_kwargs)

        def plan(step: Step) -> list[TaskInstance]:
            scheduled = step.fire(trigger_name, kwargs)
            self._check_dispatchable(scheduled)
            return scheduled

        scheduled, _ = self.storage.run_step(plan, triggers=(trigger_name,))
        self._dispatch(scheduled)
        self._post_fire(trigger_name, scheduled)
        return scheduled

    def _cascade(self, step: Step, task_name: str, kwargs: Mapping[str, Any]) -> list[TaskInstance]:
        scheduled = step.fire(task_name, kwargs)
        self._check_dispatchable(scheduled)
        return scheduled

    # ------------------------------------------------------------------
    # Recovery
    # ------------------------------------------------------------------
    def replay_failed_instance(
        self,
        task_instance: str | TaskInstance,
        replacement_kwargs: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """Mark a failed instance ``replayed`` and run a clone of it now.

        ``replacement_kwargs`` replace the clone's kwargs completely. Returns the clone.
        """
        name = _name(task_instance)
        if replacement_kwargs is not None:
            replacement_kwargs = _check_kwargs(f"replaying {name!r}", replacement_kwargs)

        def plan(step: Step) -> tuple[TaskInstance, TaskInstance]:
            clone = step.replay(name, replacement_kwargs)
            self._check_dispatchable([clone])
            return step.instance(name), clone

        (replayed, clone), _ = self.storage.run_step(plan, instance_names=(name,))
        self._dispatch([clone])
        self._post_replay(replayed)
        return clone

    def skip_failed_instance(
        self,
        task_instance: str | TaskInstance,
        cascade: bool = False,
        result: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """Mark a failed instance ``skipped``; with ``cascade``, fire its task's name
        with ``result`` as kwargs, as if it had finished with that result. A given
        ``result`` is recorded as the instance's ``result`` metadata either way."""
        name = _name(task_instance)
        given = result is not None
        result = _check_kwargs(f"skipping {name!r}", result)
        task = task_name_of(name)

        def plan(step: Step) -> tuple[TaskInstance, list[TaskInstance]]:
            skipped = step.skip(name)
            if given or cascade:
                skipped = step.update_metadata(name, {META_RESULT: result})
            if not cascade:
                return skipped, []
            return skipped, self._cascade(step, task, result)

        (skipped, scheduled), _ = self.storage.run_step(
            plan, triggers=(task,) if cascade else (), instance_names=(name,)
        )
        if cascade:
            self._dispatch(scheduled)
            self._post_fire(task, scheduled)
        self._post_skip(skipped, cascade)
        return skipped

    def update_instance_status(
        self,
        task_instance: str | TaskInstance,
        status: str,
        metadata: Mapping[str, Any] | None = None,
        cascade: bool = False,
        cascade_kwargs: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """Set an instance's status (and merge ``metadata``); optionally cascade."""
        name = _name(task_instance)
        if status not in STATUSES:
            raise ValueError(
                f"cannot set task instance {name!r} to status {status!r}; "
                f"expected one of {list(STATUSES)}"
            )
        metadata = _check_kwargs(f"metadata of {name!r}", metadata)
        cascade_kwargs = _check_kwargs(f"cascade of {name!r}", cascade_kwargs)
        task = task_name_of(name)

        def plan(step: Step) -> tuple[TaskInstance, list[TaskInstance]]:
            instance = step.set_status(name, status, metadata)
            return instance, self._cascade(step, task, cascade_kwargs) if cascade else []

        (instance, scheduled), _ = self.storage.run_step(
            plan, triggers=(task,) if cascade else (), instance_names=(name,)
        )
        if cascade:
            self._dispatch(scheduled)
            self._post_fire(task, scheduled)
        return instance

    def update_instance_metadata(
        self, task_instance: str | TaskInstance, metadata: Mapping[str, Any]
    ) -> TaskInstance:
        """Merge ``metadata`` into an instance's metadata."""
        name = _name(task_instance)
        metadata = _check_kwargs(f"metadata of {name!r}", metadata)
        instance, _ = self.storage.run_step(
            lambda step: step.update_metadata(name, metadata), instance_names=(name,)
        )
        return instance

    def mark_instance_logs_resolved(self, task_instance: str | TaskInstance) -> TaskInstance:
        """Record that someone dealt with this instance's logged errors."""
        return self.update_instance_metadata(task_instance, {META_LOGS_RESOLVED: True})

    def recover_stuck_instances(
        self, older_than: float = 0.0, statuses: Iterable[str] = (STATUS_SCHEDULED,)
    ) -> list[TaskInstance]:
        """Dispatch again instances left ``scheduled`` (e.g. by a crash between commit
        and dispatch) for at least ``older_than`` seconds. Returns them.

        A running task whose worker died stays ``running``: pass
        ``statuses=('scheduled', 'running')`` to requeue those too, once you know
        their worker is gone. Duplicate deliveries are harmless (a task only runs
        an instance that is ``scheduled``).
        """
        import time

        statuses = tuple(statuses)
        cutoff = time.time() - older_than
        names = [
            i.name
            for i in self.storage.instances.values()
            if i.status in statuses and (i.last_modified or 0) <= cutoff
        ]
        if not names:
            return []

        def plan(step: Step) -> list[TaskInstance]:
            found = []
            for name in names:
                instance = step.instance(name)
                if instance.status in statuses:
                    step.schedule(instance)
                    found.append(instance)
            self._check_dispatchable(found)
            return found

        recovered, _ = self.storage.run_step(plan, instance_names=names)
        self._dispatch(recovered)
        return recovered

    # ------------------------------------------------------------------
    # Hooks
    # ------------------------------------------------------------------
    def _post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        """Runs after a fire (or cascade) has committed and dispatched."""

    def _post_replay(self, task_instance: TaskInstance) -> None:
        """Runs after ``task_instance`` became ``replayed`` and its clone was dispatched."""

    def _post_skip(self, task_instance: TaskInstance, cascade: bool) -> None:
        """Runs after ``task_instance`` was skipped (and after the cascade, if any)."""

    # ------------------------------------------------------------------
    # Runners and dispatch
    # ------------------------------------------------------------------
    def get_runner_key(self, task_instance: TaskInstance | TaskConfig) -> str:
        config = task_instance.config if isinstance(task_instance, TaskInstance) else task_instance
        key = config.using or self.default_task_runner_name or DEFAULT_TASK_RUNNER
        return _runner_substitutes.get(key, key)

    def get_runner(self, task_instance: TaskInstance | TaskConfig) -> BaseTaskRunner:
        """The runner for ``task_instance``; :class:`RunnerNotFoundError` when its key
        is not registered (any more: unregistering a runner takes effect at once)."""
        key = self.get_runner_key(task_instance)
        try:
            cls = task_runners.get_class(key)
        except KeyError as exc:
            from triggers.exceptions import RunnerNotFoundError

            name = getattr(task_instance, "name", "?")
            raise RunnerNotFoundError(f"session {self.storage.uid!r}, {name}: {exc}") from None
        runner = self._runners.get(key)
        if runner is None or type(runner) is not cls:
            runner = cls()
            self._runners[key] = runner
        return runner

    def _check_dispatchable(self, instances: Iterable[TaskInstance]) -> None:
        for instance in instances:
            self.get_runner(instance).check(self, instance)

    def _dispatch(self, instances: Iterable[TaskInstance]) -> None:
        failures = []
        for instance in instances:
            try:
                self.get_runner(instance).run(self, instance)
            except Exception as exc:
                log.exception("could not dispatch task instance %s", instance.name)
                failures.append((instance, exc))
        if failures:
            from triggers.task import exception_metadata

            def plan(step: Step) -> None:
                for instance, exc in failures:
                    if step.instance(instance.name).status == STATUS_SCHEDULED:
                        step.set_status(instance.name, STATUS_FAILED, exception_metadata(exc))

            self.storage.run_step(plan, instance_names=[i.name for i, _ in failures])
            raise DispatchError(
                f"session {self.storage.uid!r}: could not dispatch "
                + ", ".join(f"{i.name} ({type(e).__name__}: {e})" for i, e in failures)
                + "; they are marked failed and can be replayed"
            ) from failures[0][1]

    # ------------------------------------------------------------------
    # The task protocol (called by TriggerTask.execute)
    # ------------------------------------------------------------------
    def _execute_instance(self, task: TriggerTask, name: str) -> dict[str, Any] | None:
        from triggers.task import (
            Retry,
            StatusChange,
            TaskContext,
            exception_metadata,
            trigger_kwargs_for,
        )

        def start(step: Step) -> TaskInstance | None:
            instance = step.slice.instances.get(name)
            if instance is None or instance.status != STATUS_SCHEDULED:
                return instance
            return step.set_status(
                name, STATUS_RUNNING, {META_ACTUAL_KWARGS: trigger_kwargs_for(instance)}
            )

        instance, _ = self.storage.run_step(start, instance_names=(name,))
        if instance is None or instance.status != STATUS_RUNNING:
            log.warning(
                "session %r: task instance %s is %s, not scheduled; not running it again",
                self.storage.uid,
                name,
                "missing" if instance is None else instance.status,
            )
            return None

        # The instance is this step's copy: the task may use (and change) its kwargs freely.
        context = TaskContext(self, instance, instance.metadata[META_ACTUAL_KWARGS], task)
        try:
            with task._running(context), context.get_logger_context():
                result = task._run(context)
            if result is None:
                result = {}
            if not isinstance(result, Mapping):
                raise TypeError(
                    f"{name}: {type(task).__qualname__}._run must return a mapping (dict) or "
                    f"None, got {type(result).__name__}: {result!r}"
                )
            result = _check_kwargs(f"{name}: result of _run", result)
        except Retry as retry:
            try:
                self._record_retry(instance, retry, context.log_level)
            except (InvalidTriggerKwargs, DispatchError) as exc:
                # Not storable or not dispatchable: fail rather than stay running.
                self._fail_if_running(name, exc, context)
                raise
            return None
        except StatusChange as change:
            try:
                metadata = _check_kwargs(
                    f"{name}: metadata of status {change.status!r}", change.metadata
                )
            except InvalidTriggerKwargs as exc:
                self._fail_if_running(name, exc, context)
                raise exc from change
            self._record_end(name, change.status, {**metadata, META_LOG_LEVEL: context.log_level})
            return None
        except BaseException as exc:
            if not getattr(exc, "_triggers_logged", False):
                context.get_logger().exception("%s: %s", type(exc).__name__, exc)
            self._record_end(
                name,
                STATUS_FAILED,
                {**exception_metadata(exc), META_LOG_LEVEL: context.log_level},
            )
            raise
        self._record_end(
            name,
            STATUS_FINISHED,
            {META_RESULT: result, META_LOG_LEVEL: context.log_level},
            cascade=result,
        )
        return result

    def _record_end(
        self,
        name: str,
        status: str,
        metadata: Mapping[str, Any],
        cascade: Mapping[str, Any] | None = None,
    ) -> None:
        task = task_name_of(name)

        def plan(step: Step) -> list[TaskInstance]:
            step.set_status(name, status, metadata)
            return self._cascade(step, task, cascade) if cascade is not None else []

        try:
            scheduled, _ = self.storage.run_step(
                plan, triggers=(task,) if cascade is not None else (), instance_names=(name,)
            )
        except DispatchError as exc:
            # The cascade cannot be dispatched: fail this instance rather than lose it.
            from triggers.task import exception_metadata

            failure = exception_metadata(exc)
            self.storage.run_step(
                lambda step: step.set_status(name, STATUS_FAILED, failure),
                instance_names=(name,),
            )
            raise
        if cascade is not None:
            self._dispatch(scheduled)
            self._post_fire(task, scheduled)

    def _fail_if_running(self, name: str, exc: BaseException, context: Any) -> None:
        """Mark ``name`` failed with ``exc`` (logged) unless it already left ``running``."""
        from triggers.task import exception_metadata

        context.get_logger().error("%s: %s", type(exc).__name__, exc, exc_info=exc)
        metadata = {**exception_metadata(exc), META_LOG_LEVEL: context.log_level}

        def plan(step: Step) -> None:
            if step.instance(name).status == STATUS_RUNNING:
                step.set_status(name, STATUS_FAILED, metadata)

        self.storage.run_step(plan, instance_names=(name,))

    def _record_retry(self, instance: TaskInstance, retry: Any, log_level: int) -> None:
        from triggers.task import exception_metadata

        metadata = _check_kwargs(f"retrying {instance.name!r}: metadata", retry.metadata)
        metadata[META_LOG_LEVEL] = log_level
        if retry.exc is not None:
            metadata.update(exception_metadata(retry.exc))
        replacement = (
            None
            if retry.replacement_kwargs is None
            else _check_kwargs(f"retrying {instance.name!r}", retry.replacement_kwargs)
        )
        clone_meta = {META_COOLDOWN: retry.cooldown} if retry.cooldown else None

        def plan(step: Step) -> tuple[TaskInstance, TaskInstance]:
            clone = step.replay(
                instance.name, replacement, metadata, clone_meta, allowed=(STATUS_RUNNING,)
            )
            self._check_dispatchable([clone])
            return step.instance(instance.name), clone

        (replayed, clone), _ = self.storage.run_step(plan, instance_names=(instance.name,))
        self._dispatch([clone])
        self._post_replay(replayed)


def rebuild_manager(
    message: Mapping[str, Any], manager_class: type[TriggerManager] | None = None
) -> TriggerManager:
    """Rebuild, in a worker, the manager and storage a task message names."""
    from triggers.storages import storage_backends

    storage = storage_backends.get(
        message["storage"], message["uid"], **dict(message.get("storage_options") or {})
    )
    if manager_class is not None:
        return manager_class(storage)
    key = message.get("manager") or "default"
    return trigger_managers.get(key, storage)


trigger_managers.register("default", TriggerManager)
