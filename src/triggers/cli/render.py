"""Rich tables for sessions: trigger tasks and task instances."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from triggers.types import TaskConfig, TaskInstance

__all__ = [
    "STATUS_STYLES",
    "compact",
    "summarize",
    "instances_table",
    "tasks_table",
    "instance_detail",
]

STATUS_STYLES = {
    "unstarted": "dim",
    "scheduled": "cyan",
    "running": "bold cyan",
    "finished": "green",
    "failed": "bold red",
    "skipped": "yellow",
    "replayed": "magenta",
    "abandoned": "red",
}


def compact(value: Any, limit: int = 60) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters (``…`` marks the cut)."""
    if value is None or value == {}:
        return ""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _scalar(value: Any, limit: int = 24) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(value: Any, limit: int = 48) -> str:
    """A short ``key=value`` summary of a mapping; nested data shows as ``{…}`` / ``[n]``."""
    if not isinstance(value, Mapping):
        return _scalar(value, limit)
    parts = []
    for key in sorted(value):
        item = value[key]
        if isinstance(item, Mapping):
            shown = "{…}" if item else "{}"
        elif isinstance(item, (list, tuple)):
            shown = f"[{len(item)}]"
        else:
            shown = _scalar(item)
        parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kwargs_summary(instance: TaskInstance, limit: int = 48) -> str:
    """One line per received trigger (``trigger: key=value ...``), then what it waits for."""
    lines = []
    for trigger in sorted(instance.kwargs):
        summary = summarize(instance.kwargs[trigger], limit)
        lines.append(f"{trigger}: {summary}" if summary else trigger)
    for trigger in sorted(instance.abandon_state):
        lines.append(f"unless {trigger}")
    missing = sorted(instance.config.after - set(instance.kwargs))
    if missing and instance.status == "unstarted":
        lines.append("waiting for " + ", ".join(missing))
    return "\n".join(lines)


def outcome(instance: TaskInstance, limit: int = 48) -> str:
    """A summary of the result, or the error's last line, or nothing."""
    meta = instance.metadata
    if "result" in meta:
        return summarize(meta["result"], limit) or "{}"
    if meta.get("exceptionType"):
        info = (meta.get("exceptionInfo") or "").strip().splitlines()
        last = info[-1] if info else meta["exceptionType"]
        return last if len(last) <= limit else last[: limit - 1] + "…"
    return ""


def triggers_summary(config: TaskConfig) -> str:
    """``after: ...`` / ``andEvery: ...`` / ``unless: ...`` lines of a task."""
    after = sorted(config.after - ({config.and_every} if config.and_every else set()))
    lines = []
    if after:
        lines.append("after " + ", ".join(after))
    if config.and_every:
        lines.append("andEvery " + config.and_every)
    if config.unless:
        lines.append("unless " + ", ".join(sorted(config.unless)))
    return "\n".join(lines)


def tasks_table(
    tasks: Mapping[str, TaskConfig],
    instances: Mapping[str, TaskInstance],
    title: str = "Trigger tasks",
    show_counts: bool = True,
) -> Table:
    """A table of trigger tasks: directives and (optionally) instance counts by status."""
    table = Table(title=title, title_justify="left")
    table.add_column("task", style="bold", no_wrap=True)
    table.add_column("triggers")
    table.add_column("run", overflow="fold")
    if show_counts:
        table.add_column("instances")
    for name in sorted(tasks):
        config = tasks[name]
        row = [
            name,
            triggers_summary(config),
            config.run + (f"\n(using {config.using})" if config.using else ""),
        ]
        if show_counts:
            counts = Counter(i.status for i in instances.values() if i.config.name == name)
            row.append(
                "\n".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"
            )
        table.add_row(*row)
    return table


def instances_table(instances: Iterable[TaskInstance], title: str = "Task instances") -> Table:
    """A table of task instances: status, kwargs summary, result, log level."""
    table = Table(title=title, title_justify="left")
    table.add_column("instance", style="bold", no_wrap=True)
    table.add_column("status")
    table.add_column("kwargs received", overflow="fold")
    table.add_column("result or error", overflow="fold")
    table.add_column("log level")
    for instance in instances:
        level = instance.log_level_name if instance.log_level else ""
        if level and not instance.logs_resolved:
            level += " (unresolved)"
        name = instance.name
        if instance.parent:
            name += f"\n(from {instance.parent})"
        table.add_row(
            name,
            status_text(instance.status),
            kwargs_summary(instance),
            outcome(instance),
            level,
        )
    return table


def _when(stamp: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))
    except (TypeError, ValueError):
        return str(stamp)


def instance_detail(instance: TaskInstance) -> Table:
    """Everything about one instance, including its traceback."""
    table = Table(title=f"Task instance {instance.name}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("status", status_text(instance.status))
    table.add_row("task", f"{instance.config.name} (run {instance.config.run})")
    table.add_row("kwargs", json.dumps(instance.kwargs, indent=2, sort_keys=True))
    if instance.abandon_state:
        table.add_row("unless received", json.dumps(instance.abandon_state, sort_keys=True))
    table.add_row("log level", instance.log_level_name if instance.log_level else "-")
    table.add_row("logs resolved", "yes" if instance.logs_resolved else "no")
    meta = dict(instance.metadata)
    stamps = meta.pop("timestamps", {}) or {}
    for key in sorted(stamps, key=lambda k: float(stamps[k])):
        table.add_row(f"  {key}", _when(stamps[key]))
    info = meta.pop("exceptionInfo", None)
    for key in sorted(meta):
        table.add_row(key, json.dumps(meta[key], indent=2, sort_keys=True, default=str))
    if info:
        table.add_row("exceptionInfo", Text(info.rstrip()))
    return table
