"""``runtime_env``: what a task or actor needs around it.

``working_dir`` and ``py_modules`` reach the workers the way the cluster's objects do: on the local
cluster every process shares this machine's files, so they are used in place; on a cluster whose
store is elsewhere (Fargate: S3) each directory or module is zipped once, content-addressed, put in
the object store, and unpacked once per node (``resolve``). Package installs (``pip``, ``conda``)
need an image and are refused here with a clear error (a Fargate cluster takes ``pip`` at
``init()``, for its image)."""

from __future__ import annotations

import os
import types
import hashlib
import io
import tempfile
import zipfile
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
            f"runtime_env {image} of {where}: installing packages per task needs a worker image of its "
            "own. On the local cluster install them into this Python environment (its workers share "
            "it); for a Fargate cluster give them to init(cluster='fargate', runtime_env={'pip': "
            "[...]}): its worker image is built with them."
        )
    unknown = sorted(set(env) - SUPPORTED)
    if unknown:
        raise ValueError(f"runtime_env keys {unknown} of {where} are not supported; supported: {sorted(SUPPORTED)}")
    out: dict[str, Any] = {}
    env_vars = env.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise TypeError("runtime_env['env_vars'] must be a dict of str -> str")
        out["env_vars"] = dict(env_vars)
    working_dir = env.get("working_dir")
    if working_dir is not None:
        out["working_dir"] = _local_dir(working_dir, "working_dir", where)
    excludes = env.get("excludes")
    if excludes is not None:
        if not isinstance(excludes, (list, tuple)) or not all(isinstance(e, str) for e in excludes):
            raise TypeError("runtime_env['excludes'] must be a list of patterns, e.g. ['data/', '*.bin']")
        out["excludes"] = list(excludes)
    modules = env.get("py_modules")
    if modules is not None:
        if not isinstance(modules, (list, tuple)):
            raise TypeError("runtime_env['py_modules'] must be a list of paths or modules")
        out["py_modules"] = [_module_path(m, where) for m in modules]
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


def _module_path(module: Any, where: str) -> str:
    """The package directory or ``.py`` file of ``module`` (a path or a module object); its parent
    goes on the worker's ``sys.path``, so that it imports by its name."""
    if isinstance(module, types.ModuleType):
        file = getattr(module, "__file__", None)
        if not file:
            raise RuntimeEnvSetupError(f"runtime_env['py_modules'] of {where}: {module.__name__} has no file")
        return os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file
    if not isinstance(module, (str, os.PathLike)):
        raise TypeError(f"runtime_env['py_modules'] entries must be paths or modules, got {type(module).__name__}")
    path = os.path.abspath(os.path.expanduser(os.fspath(module)))
    if "://" in os.fspath(module) or not os.path.exists(path):
        raise RuntimeEnvSetupError(f"runtime_env['py_modules'] of {where}: {module!r} is not a local file or directory")
    return path.rstrip(os.sep)


def merge(job: dict[str, Any], task: dict[str, Any] | None) -> dict[str, Any]:
    """The task's environment: the job's (from init), overridden key by key by the task's."""
    out = dict(job)
    for key, value in (task or {}).items():
        if key == "env_vars":
            out["env_vars"] = {**job.get("env_vars", {}), **value}
        else:
            out[key] = value
    return out


def apply(spec: pb.TaskSpec, env: dict[str, Any], store=None) -> None:
    """Put ``env`` into ``spec``; directories are shipped through ``store`` when the cluster's
    workers don't share this machine's files."""
    if env.get("env_vars"):
        spec.env_vars.update(env["env_vars"])
    excludes = tuple(env.get("excludes", ()))
    if env.get("working_dir"):
        spec.working_dir = _ship(env["working_dir"], store, True, excludes)
    for module in env.get("py_modules", ()):
        spec.py_modules.append(_ship(module, store, False, excludes) if _remote(store) else os.path.dirname(module))


# -- shipping directories through the object store ---------------------------------------------

#: A shipped directory's reference in a TaskSpec: the object-store key of its zip.
SHIPPED = "store:"
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".venv", "node_modules"}
#: A shipped directory or module may hold at most this much (use runtime_env['excludes']).
MAX_SHIPPED_BYTES = 256 * 1024 * 1024
#: A shipped directory is looked at again for changes at most this often (seconds).
RECHECK_S = 2.0
#: (store url, path, excludes) -> (when checked, tree signature, key).
_shipped: dict[tuple, tuple[float, tuple, str]] = {}


def _excluded(rel: str, excludes: tuple[str, ...]) -> bool:
    """Gitignore-like: a pattern matches the relative path or any of its parts ("data/" a directory)."""
    import fnmatch

    parts = rel.split(os.sep)
    for pattern in excludes:
        p = pattern.strip("/")
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts):
            return True
    return False


def _remote(store) -> bool:
    from .store import LocalStore

    return store is not None and not isinstance(store, LocalStore)


def _files(path: str, contents: bool, excludes: tuple[str, ...]) -> list[tuple[str, str, os.stat_result]]:
    """(file on disk, name in the zip, its stat), sorted: a directory's contents (``contents``)
    or the module itself under its own name, without what ``excludes`` names."""
    if os.path.isfile(path):
        return [(path, os.path.basename(path), os.stat(path))]
    base = path if contents else os.path.dirname(path)
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS
                         and not _excluded(os.path.relpath(os.path.join(root, d), path), excludes))
        for name in sorted(files):
            full = os.path.join(root, name)
            if not _excluded(os.path.relpath(full, path), excludes):
                out.append((full, os.path.relpath(full, base), os.stat(full)))
    return out


def _ship(path: str, store, contents: bool, excludes: tuple[str, ...] = ()) -> str:
    if not _remote(store):
        return path
    import time

    cache_key = (store.url, path, excludes)
    cached = _shipped.get(cache_key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < RECHECK_S:
        return SHIPPED + cached[2]
    files = _files(path, contents, excludes)
    signature = tuple((arc, st.st_mtime_ns, st.st_size) for _, arc, st in files)
    if cached is not None and cached[1] == signature:
        _shipped[cache_key] = (now, signature, cached[2])
        return SHIPPED + cached[2]
    total = sum(st.st_size for _, _, st in files)
    if total > MAX_SHIPPED_BYTES:
        raise RuntimeEnvSetupError(
            f"runtime_env: {path} holds {total / 2**20:.0f} MiB, more than the {MAX_SHIPPED_BYTES // 2**20} MiB "
            "that travel to the workers with a task. Leave data out with runtime_env['excludes'] "
            "(e.g. ['data/', '*.parquet']) and pass it with starburst.put() or from S3.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for full, arc, st in files:
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (st.st_mode & 0o777) << 16
            with open(full, "rb") as f:
                zf.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    key = "pkg-" + hashlib.sha256(data).hexdigest()[:32]
    from .serialization import serialize

    store.put(key, serialize(data))
    _shipped[cache_key] = (now, signature, key)
    return SHIPPED + key


def resolve(entry: str, store) -> str:
    """On a worker: the local directory for a TaskSpec's working_dir / py_modules entry (a shipped
    one is fetched and unpacked once per machine)."""
    if not entry.startswith(SHIPPED):
        return entry
    key = entry[len(SHIPPED):]
    if not key.startswith("pkg-") or not key[4:].isalnum():
        raise RuntimeEnvSetupError(f"not a shipped package: {entry!r}")
    dest = os.path.join(tempfile.gettempdir(), "starburst-packages", key)
    if not os.path.isdir(dest):
        from .serialization import deserialize

        data = deserialize(store.get(key))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=key + ".", dir=os.path.dirname(dest))
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(staging)
        try:
            os.rename(staging, dest)  # atomic: another executor may have unpacked it meanwhile
        except OSError:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return dest
