"""JSON encoding of stored records, shared by the built-in backends."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from triggers.config import parse_task
from triggers.types import TaskConfig, TaskInstance

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON for storage (never pickle); raises on NaN/infinity and non-JSON types."""
    return _encode(value)


loads = json.loads


@lru_cache(maxsize=4096)
def decode_config(name: str, text: str) -> TaskConfig:
    """Parse a stored task configuration (cached: configurations rarely change)."""
    return parse_task(name, json.loads(text), check_runner=False)


def encode_config(config: TaskConfig) -> str:
    return dumps(config.to_dict())


def decode_instance(text: str, configs: dict[str, TaskConfig]) -> TaskInstance:
    data = json.loads(text)
    return TaskInstance.from_dict(data, configs[data["task"]])


def encode_instance(instance: TaskInstance) -> str:
    return dumps(instance.to_dict())
