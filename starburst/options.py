"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and rules."""

from __future__ import annotations

import math
import warnings
from typing import Any

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "accelerator_type",
    "max_calls", "max_retries", "retry_exceptions", "num_returns", "name", "runtime_env",
    "scheduling_strategy", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "label_selector", "enable_task_events", "_metadata",
}

#: Options that are accepted so ported code runs, but change nothing here (warned about once).
_NO_EFFECT = {"object_store_memory", "max_calls", "enable_task_events", "_metadata"}
#: Options whose meaning starburst can't honour: refused with a clear error.
_REFUSED = {
    "accelerator_type": "starburst has no accelerator types yet",
    "placement_group": "placement groups are not supported by starburst",
    "placement_group_bundle_index": "placement groups are not supported by starburst",
    "placement_group_capture_child_tasks": "placement groups are not supported by starburst",
    "label_selector": "node labels are not supported by starburst",
}

_warned: set[str] = set()


def _check_quantity(name: str, value: Any, whole_above_one: bool = False) -> float:
    """Ray's rules: a number >= 0; unit resources (GPUs) must be whole numbers above 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < 0 or math.isnan(value):
        raise ValueError(f"{name} must be >= 0, got {value}")
    if 0 < value < 0.0001:
        raise ValueError(f"{name}={value} is finer than the resource precision of 0.0001")
    if whole_above_one and value > 1 and float(value) != int(value):
        raise ValueError(f"{name} must be a whole number when greater than 1, got {value}")
    return float(value)


def reject_unknown(options: dict[str, Any], allowed: set[str], where: str) -> None:
    """ValueError naming the unknown options and listing the valid ones."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"Invalid option keyword {', '.join(map(repr, unknown))} for {where}. "
            f"Valid ones are: {', '.join(sorted(o for o in allowed if not o.startswith('_')))}."
        )


def check_timeout(timeout: Any) -> None:
    """Ray's rules for a ``timeout`` argument: None, or a number of seconds >= 0."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number or None")


def validate(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Check options for a task; raise ValueError/TypeError naming the problem and the fix."""
    reject_unknown(options, TASK_OPTIONS, where)
    for key, value in options.items():
        if key in _REFUSED and value is not None:
            raise ValueError(f"option {key!r} of {where}: {_REFUSED[key]}")
        if key in _NO_EFFECT and value is not None and key not in _warned:
            _warned.add(key)
            warnings.warn(f"option {key!r} has no effect in starburst", stacklevel=4)
    for key in ("num_cpus", "num_gpus", "memory"):
        if options.get(key) is not None:
            _check_quantity(key, options[key], whole_above_one=key == "num_gpus")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict of name -> quantity, got {type(resources).__name__}")
        for name, qty in resources.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"use num_cpus / num_gpus / memory instead of resources={{{name!r}: ...}}")
            _check_quantity(f"resources[{name!r}]", qty)
    if "num_returns" in options:
        n = options["num_returns"]
        if n in ("dynamic", "streaming"):
            pass
        elif isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"num_returns must be an integer >= 0, got {n!r}")
        elif n < 0:
            raise ValueError(f"num_returns must be an integer >= 0, got {n!r}")
    if "max_retries" in options:
        n = options["max_retries"]
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"max_retries must be an integer >= -1 (-1: retry forever), got {n!r}")
        if n < -1:
            raise ValueError(f"max_retries must be an integer >= -1 (-1: retry forever), got {n!r}")
    if "retry_exceptions" in options:
        r = options["retry_exceptions"]
        if not isinstance(r, (bool, list, tuple)):
            raise TypeError(f"retry_exceptions must be a bool or a list of exception classes, got {r!r}")
        if not isinstance(r, bool) and not all(isinstance(c, type) and issubclass(c, BaseException) for c in r):
            raise ValueError(f"retry_exceptions must list exception classes, got {r!r}")
    env = options.get("runtime_env")
    if env is not None:
        from . import runtime_env

        options["runtime_env"] = runtime_env.validate(env, where)
    strategy = options.get("scheduling_strategy")
    if strategy not in (None, "DEFAULT", "SPREAD"):
        raise ValueError(
            f"scheduling_strategy={strategy!r} is not supported by starburst; use 'DEFAULT' or 'SPREAD'"
        )
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    return options
