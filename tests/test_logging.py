"""SPEC section 10: context loggers, exceptions logged with context, logLevel,
logs_resolved rules."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sample_tasks import P, SampleError, settle
from triggers.exceptions import with_context
from triggers.logging import ContextLogger, LevelTracker, logger_context
from triggers.manager import TriggerManager
from triggers.task import StatusChange
from triggers.types import TaskConfig, TaskInstance

LOGGER = "triggers.task.sample_tasks.LoggingTask"


def run_logging_task(manager: TriggerManager, **log: Any) -> TaskInstance:
    manager.update_configuration({"t_log": {"after": ["go"], "run": P + "LoggingTask"}})
    manager.fire("go", {"log": log})
    settle(manager)
    return manager.storage["t_log#0"]


def records_of(caplog: pytest.LogCaptureFixture, uid: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and getattr(r, "context", {}).get("session") == uid
    ]


def test_context_attached_to_every_record(
    manager: TriggerManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    instance = run_logging_task(manager, level="warning")
    assert instance.status == "finished"
    records = records_of(caplog, manager.storage.uid)
    assert [r.getMessage() for r in records] == ["starting", "row 3 looks odd"]
    uid = manager.storage.uid
    base = {"session": uid, "instance": "t_log#0", "task": "t_log", "step": "import"}
    starting, odd = records
    assert starting.context == base  # type: ignore[attr-defined]
    # Per-message context is added to that message only.
    assert odd.context == {**base, "row": 3}  # type: ignore[attr-defined]
    assert odd.levelno == logging.WARNING


def test_max_level_stored_as_log_level(manager: TriggerManager) -> None:
    instance = run_logging_task(manager, level="warning")
    assert instance.metadata["logLevel"] == logging.WARNING
    assert instance.log_level_name == "WARNING"
    assert instance.logs_resolved
    assert manager.storage.get_instances_with_unresolved_logs() == []


def test_info_only_task_log_level(manager: TriggerManager) -> None:
    instance = run_logging_task(manager, level="info")
    assert instance.metadata["logLevel"] == logging.INFO


def test_errors_make_logs_unresolved_even_when_finished(manager: TriggerManager) -> None:
    instance = run_logging_task(manager, level="error")
    assert instance.status == "finished"
    assert instance.metadata["logLevel"] == logging.ERROR
    assert not instance.logs_resolved
    assert [i.name for i in manager.storage.get_instances_with_unresolved_logs()] == ["t_log#0"]
    manager.mark_instance_logs_resolved("t_log#0")
    settle(manager)
    assert manager.storage["t_log#0"].logs_resolved
    assert manager.storage.get_instances_with_unresolved_logs() == []


def test_exception_in_block_is_logged_once_with_context(
    manager: TriggerManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    instance = run_logging_task(manager, level="info", **{"raise": True})
    assert instance.status == "failed"
    assert instance.metadata["exceptionType"] == "sample_tasks.SampleError"
    context = instance.metadata["exceptionContext"]
    assert context["step"] == "import" and context["instance"] == "t_log#0"
    assert instance.metadata["logLevel"] == logging.ERROR
    failures = [r for r in records_of(caplog, manager.storage.uid) if r.exc_info]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert "SampleError: giving up" in failures[0].getMessage()
    assert failures[0].context["step"] == "import"  # type: ignore[attr-defined]


def test_failing_task_without_logger_still_logs_its_exception(
    manager: TriggerManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.update_configuration({"t_f": {"after": ["go"], "run": "triggers.testing.FailingTask"}})
    manager.fire("go")
    settle(manager)
    records = [
        r for r in caplog.records
        if getattr(r, "context", {}).get("instance") == "t_f#0"
        and getattr(r, "context", {}).get("session") == manager.storage.uid
    ]
    assert len(records) == 1 and records[0].exc_info
    assert manager.storage["t_f#0"].log_level == logging.ERROR


# --- logs_resolved rules --------------------------------------------------------------------------
def instance(status: str, level: int, **meta: Any) -> TaskInstance:
    config = TaskConfig.from_dict("t_x", {"after": ["a"], "run": "x.Y"})
    return TaskInstance("t_x#0", config, status, metadata={"logLevel": level, **meta})


@pytest.mark.parametrize(
    "status, level, resolved",
    [
        ("finished", logging.WARNING, True),
        ("finished", logging.ERROR, False),
        ("failed", logging.CRITICAL, False),
        ("running", logging.ERROR, False),
        ("abandoned", logging.ERROR, True),
        ("replayed", logging.ERROR, True),
        ("skipped", logging.CRITICAL, True),
        ("failed", logging.NOTSET, True),
    ],
)
def test_logs_resolved_rules(status: str, level: int, resolved: bool) -> None:
    assert instance(status, level).logs_resolved is resolved
    assert instance(status, level, logsResolved=True).logs_resolved is True


def test_log_level_threshold_is_error_and_overridable() -> None:
    assert TaskInstance.LOG_LEVEL_THRESHOLD == logging.ERROR

    class Strict(TaskInstance):
        LOG_LEVEL_THRESHOLD = logging.WARNING

    config = TaskConfig.from_dict("t_x", {"after": ["a"], "run": "x.Y"})
    strict = Strict("t_x#0", config, "finished", metadata={"logLevel": logging.WARNING})
    assert not strict.logs_resolved
    assert instance("finished", logging.WARNING).logs_resolved


# --- the logging building blocks --------------------------------------------------------------
class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Any:
    logger = logging.getLogger("triggers.tests.logging")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True


def test_logger_context_tracks_level_and_logs_exceptions(captured: Any) -> None:
    logger, handler = captured
    tracker = LevelTracker()
    with pytest.raises(KeyError) as info, logger_context(logger, {"job": 1}, tracker) as log:
        assert isinstance(log, ContextLogger)
        log.debug("d")
        log.info("i", extra={"context": {"job": 2, "x": 1}})
        raise KeyError("k")
    assert tracker.max_level == logging.ERROR
    assert info.value.context == {"job": 1}  # type: ignore[attr-defined]
    assert [r.context for r in handler.records] == [  # type: ignore[attr-defined]
        {"job": 1},
        {"job": 2, "x": 1},
        {"job": 1},
    ]
    assert handler.records[-1].exc_info is not None


def test_quiet_status_changes_are_not_logged(captured: Any) -> None:
    logger, handler = captured
    tracker = LevelTracker()
    with pytest.raises(StatusChange), logger_context(logger, {}, tracker):
        raise StatusChange("skipped", {"why": "x"})
    assert handler.records == []
    assert tracker.max_level == logging.NOTSET


def test_nested_blocks_log_an_exception_once(captured: Any) -> None:
    logger, handler = captured
    tracker = LevelTracker()
    with (
        pytest.raises(SampleError) as info,
        logger_context(logger, {"outer": 1}, tracker),
        logger_context(logger, {"inner": 1}, tracker),
    ):
        raise SampleError("x")
    assert len(handler.records) == 1
    assert info.value.context == {"inner": 1, "outer": 1}  # type: ignore[attr-defined]


def test_with_context_merges_and_returns_the_exception() -> None:
    exc = ValueError("bad")
    assert with_context(exc, {"a": 1}) is exc
    with_context(exc, {"b": 2, "a": 3})
    assert exc.context == {"a": 3, "b": 2}  # type: ignore[attr-defined]
