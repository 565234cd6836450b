"""Context loggers for tasks: per-message context and the highest level emitted."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, cast

from triggers.exceptions import with_context

__all__ = ["ContextLogger", "LevelTracker", "logger_context"]


class LevelTracker:
    """Remembers the highest log level emitted through the loggers that share it."""

    def __init__(self) -> None:
        self.max_level = logging.NOTSET

    def observe(self, level: int) -> None:
        if level > self.max_level:
            self.max_level = level


class ContextLogger(logging.LoggerAdapter):
    """A logger adapter that attaches a context to every message.

    ``logger.info('msg', extra={'context': {...}})`` adds per-message context on
    top of the adapter's; the merged mapping is available to handlers as
    ``record.context``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        context: Mapping[str, Any] | None = None,
        tracker: LevelTracker | None = None,
    ) -> None:
        super().__init__(logger, {"context": dict(context or {})})
        self.tracker = tracker if tracker is not None else LevelTracker()

    @property
    def context(self) -> dict[str, Any]:
        extra = cast("Mapping[str, Any]", self.extra)
        return cast("dict[str, Any]", extra["context"])

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        context = dict(self.context)
        own = extra.get("context")
        if isinstance(own, Mapping):
            context.update(own)
        extra["context"] = context
        kwargs["extra"] = extra
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.tracker.observe(level)
        super().log(level, msg, *args, **kwargs)


@contextmanager
def logger_context(
    logger: logging.Logger,
    context: Mapping[str, Any] | None = None,
    tracker: LevelTracker | None = None,
) -> Iterator[ContextLogger]:
    """Yield a :class:`ContextLogger`; log (and re-raise) any exception in the block.

    The exception gets the block's context attached with :func:`with_context`,
    so it ends up in the failed instance's ``exceptionContext``.
    """
    adapter = ContextLogger(logger, context, tracker)
    try:
        yield adapter
    except Exception as exc:
        if getattr(exc, "quiet", False):  # skip / retry are not errors
            raise
        with_context(exc, adapter.context)
        if not getattr(exc, "_triggers_logged", False):
            adapter.exception("%s: %s", type(exc).__name__, exc)
            try:
                exc._triggers_logged = True  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover
                pass
        raise
