"""``runtime_env``: what a task or actor needs around it. On the local cluster every process shares
this machine's files, so ``working_dir`` and ``py_modules`` are used in place; package installs
(``pip``, ``conda``) need an image and are refused here with a clear error."""

from __future__ import annotations

import os
import types
from typing import Any

from ._proto import starburst_pb2 as pb
from .exceptions import RuntimeEnvSetupError

SUPPORTED = {"env_vars", "working_dir", "py_modules", "excludes", "config"}
NEEDS_IMAGE = {"pip", "conda", "uv", "container", "image_uri"}


def validate(env: Any, where: str) -> dict[str, Any]:
    """Check a runtime_env at the call site; returns it with paths made absolute."""
    if not isinstance(env, dict):
        raise TypeError(f"runtime_env of {where} must be a dict, got {type(env).__name__}")
    image = sorted(set(env) & NEEDS_IMAGE)
    if image:
        raise RuntimeEnvSetupError(
            f"runtime_env {image} of {where}: installing packages per task needs a worker image, which "
            "the local cluster does not use. Install them into this Python environment instead "
            "(e.g. 'pip install ...'): the local cluster's workers share it."
        )
    unknown = sorted(set(env) - SUPPORTED)
    if unknown:
        raise ValueError(f"runtime_env keys {unknown} of {where} are not supported; supported: {sorted(SUPPORTED)}")
    out: dict[str, Any] = {}
    env_vars = env.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise TypeError("runtime_env['env_vars'] must be a dict of str -> str")
        out["env_vars"] = dict(env_vars)
    working_dir = env.get("working_dir")
    if working_dir is not None:
        out["working_dir"] = _local_dir(working_dir, "working_dir", where)
    modules = env.get("py_modules")
    if modules is not None:
        if not isinstance(modules, (list, tuple)):
            raise TypeError("runtime_env['py_modules'] must be a list of paths or modules")
        out["py_modules"] = [_module_root(m, where) for m in modules]
    return out


def _local_dir(path: Any, key: str, where: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"runtime_env[{key!r}] must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if "://" in path:
        raise RuntimeEnvSetupError(f"runtime_env[{key!r}]={path!r} of {where}: remote URIs are not "
                                   "supported on the local cluster; give a local directory")
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise RuntimeEnvSetupError(f"runtime_env[{key!r}] of {where}: {path!r} is not a directory")
    return full


def _module_root(module: Any, where: str) -> str:
    """The directory to put on sys.path so that ``module`` (a package dir, a .py file or a module
    object) imports by its name."""
    if isinstance(module, types.ModuleType):
        file = getattr(module, "__file__", None)
        if not file:
            raise RuntimeEnvSetupError(f"runtime_env['py_modules'] of {where}: {module.__name__} has no file")
        path = os.path.dirname(file)
        return os.path.dirname(path) if os.path.basename(file) == "__init__.py" else path
    if not isinstance(module, (str, os.PathLike)):
        raise TypeError(f"runtime_env['py_modules'] entries must be paths or modules, got {type(module).__name__}")
    path = os.path.abspath(os.path.expanduser(os.fspath(module)))
    if "://" in os.fspath(module) or not os.path.exists(path):
        raise RuntimeEnvSetupError(f"runtime_env['py_modules'] of {where}: {module!r} is not a local file or directory")
    return os.path.dirname(path)


def merge(job: dict[str, Any], task: dict[str, Any] | None) -> dict[str, Any]:
    """The task's environment: the job's (from init), overridden key by key by the task's."""
    out = dict(job)
    for key, value in (task or {}).items():
        if key == "env_vars":
            out["env_vars"] = {**job.get("env_vars", {}), **value}
        else:
            out[key] = value
    return out


def apply(spec: pb.TaskSpec, env: dict[str, Any]) -> None:
    if env.get("env_vars"):
        spec.env_vars.update(env["env_vars"])
    if env.get("working_dir"):
        spec.working_dir = env["working_dir"]
    spec.py_modules.extend(env.get("py_modules", ()))
