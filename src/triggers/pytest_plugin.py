"""pytest plugin (auto-loaded): the testing toolbox as fixtures.

- ``triggers_threading``: tasks that would go to Celery run on threads.
- ``trigger_storage``: a fresh in-memory session (override it to use another backend).
- ``trigger_manager``: a :class:`TriggerManager` on ``trigger_storage``, running
  tasks on threads; waits for them at the end of the test.
- ``trigger_asserts``: the assertions of :class:`TriggerManagerTestCaseMixin`
  (``assertInstanceFinished`` ...) bound to ``trigger_manager``.
"""

from __future__ import annotations

import unittest
import uuid
from collections.abc import Iterator

import pytest

from triggers.manager import TriggerManager
from triggers.storages.base import BaseTriggerStorage
from triggers.testing import TriggerManagerTestCaseMixin, threading_runner


class TriggerAssertions(TriggerManagerTestCaseMixin, unittest.TestCase):
    """The mixin's assertions, usable outside a TestCase class."""

    def __init__(self, manager: TriggerManager) -> None:
        unittest.TestCase.__init__(self, "runTest")
        self.manager = manager
        self.maxDiff = None

    def runTest(self) -> None:  # pragma: no cover - never run as a test
        pass


@pytest.fixture
def triggers_threading() -> Iterator[None]:
    from triggers.runners.threading import ThreadingTaskRunner

    with threading_runner():
        yield
        ThreadingTaskRunner.join_all(timeout=60)


@pytest.fixture
def trigger_storage() -> Iterator[BaseTriggerStorage]:
    from triggers.storages.memory import MemoryStorageBackend

    storage = MemoryStorageBackend(f"pytest-{uuid.uuid4().hex}")
    yield storage
    storage.delete_session()


@pytest.fixture
def trigger_manager(
    trigger_storage: BaseTriggerStorage, triggers_threading: None
) -> TriggerManager:
    return TriggerManager(trigger_storage)


@pytest.fixture
def trigger_asserts(trigger_manager: TriggerManager) -> TriggerAssertions:
    return TriggerAssertions(trigger_manager)
