"""Parse and validate trigger task configurations.

Every check runs before anything is stored; the first problem found raises
:class:`~triggers.exceptions.ConfigurationError` naming the task, the directive
and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from triggers.exceptions import ConfigurationError
from triggers.types import TaskConfig

__all__ = ["parse_task", "parse_configuration", "load_configuration_file", "KNOWN_DIRECTIVES"]

KNOWN_DIRECTIVES = ("after", "run", "andEvery", "unless", "withParams", "using")


def _trigger_names(task: str, directive: str, value: Any) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigurationError(
            task, directive, f"expected a list of trigger names, got {type(value).__name__}"
        )
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigurationError(
                task, directive, f"expected non-empty trigger name strings, got {item!r}"
            )
    return frozenset(value)


def _check_json(task: str, directive: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(task, directive, f"expected JSON-serializable data ({exc})")


def parse_task(name: Any, data: Any, check_runner: bool = True) -> TaskConfig:
    """Validate one task's directives and build its :class:`TaskConfig`."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(None, None, f"task names must be non-empty strings, got {name!r}")
    if "#" in name:
        raise ConfigurationError(name, None, "task names must not contain '#'")
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            name, None, f"expected a mapping of directives, got {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigurationError(name, None, f"directive names must be strings, got {key!r}")

    if "run" not in data:
        raise ConfigurationError(name, "run", "missing; expected the name of a TriggerTask")
    run = data["run"]
    if not isinstance(run, str) or not run.strip():
        raise ConfigurationError(
            name, "run", f"expected the non-empty name of a TriggerTask, got {run!r}"
        )

    and_every = data.get("andEvery")
    if and_every is not None and (not isinstance(and_every, str) or not and_every):
        raise ConfigurationError(
            name, "andEvery", f"expected a single trigger name (a string), got {and_every!r}"
        )

    if "after" not in data:
        raise ConfigurationError(name, "after", "missing; expected a list of trigger names")
    after = _trigger_names(name, "after", data["after"])
    if not after and and_every is None:
        raise ConfigurationError(
            name, "after", "must not be empty unless 'andEvery' is given"
        )
    if and_every is not None:
        after = after | {and_every}

    unless = _trigger_names(name, "unless", data.get("unless", []))
    # A task's own name fires when it finishes: waiting for it would never start the
    # task (after/unless), or would start it again after every run (andEvery).
    for directive, names in (("andEvery", {and_every}), ("after", after), ("unless", unless)):
        if name in names:
            raise ConfigurationError(
                name, directive, "must not name the task itself (its cascade trigger)"
            )

    with_params = data.get("withParams", {})
    if with_params is None:
        with_params = {}
    if not isinstance(with_params, Mapping):
        raise ConfigurationError(
            name, "withParams", f"expected a dict of dicts, got {type(with_params).__name__}"
        )
    for key, value in with_params.items():
        if not isinstance(key, str) or not isinstance(value, Mapping):
            raise ConfigurationError(
                name,
                "withParams",
                f"expected a dict of dicts (trigger name -> kwargs); "
                f"{key!r} maps to {type(value).__name__}",
            )
    _check_json(name, "withParams", with_params)

    using = data.get("using")
    if using is not None:
        if not isinstance(using, str) or not using:
            raise ConfigurationError(name, "using", f"expected a runner key, got {using!r}")
        if check_runner:
            from triggers.runners import task_runners

            if using not in task_runners:
                raise ConfigurationError(
                    name,
                    "using",
                    f"unknown runner key {using!r}; expected one of {task_runners.keys()}",
                )

    extras = {k: v for k, v in data.items() if k not in KNOWN_DIRECTIVES}
    _check_json(name, "extras", extras)

    return TaskConfig(
        name=name,
        after=after,
        run=run,
        and_every=and_every,
        unless=unless,
        with_params=json.loads(json.dumps(with_params)),
        using=using,
        extras=json.loads(json.dumps(extras)),
    )


def parse_configuration(config: Any) -> dict[str, TaskConfig]:
    """Validate a whole configuration mapping ``{task_name: {directive: value}}``."""
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            None,
            None,
            f"expected a mapping of task names to directives, got {type(config).__name__}",
        )
    return {name: parse_task(name, data) for name, data in config.items()}


def load_configuration_file(path: str | Path) -> dict[str, Any]:
    """Read a configuration from a JSON file (or YAML with the ``yaml`` extra).

    Returns the raw mapping; pass it to ``update_configuration`` (which validates).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise ConfigurationError(
                None, None, f"{path}: YAML needs the 'yaml' extra (pip install triggers[yaml])"
            ) from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(None, None, f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ConfigurationError(None, None, f"{path}: expected a mapping of task names at the top")
    parse_configuration(data)
    return dict(data)
