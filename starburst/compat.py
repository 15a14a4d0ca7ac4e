"""Run unmodified Ray programs on starburst: ``import ray`` resolves to starburst.

:func:`install_ray_alias` puts an import hook first on ``sys.meta_path`` so that ``ray`` *is* the
``starburst`` module (``ray.init is starburst.init``) and every ``ray.X`` is ``starburst.X``
(``ray.util``, ``ray.util.queue``, ``ray.exceptions``, ...): the very same module objects, so classes
and exceptions are identical whichever name they were imported by. A ``ray.X`` that starburst lacks
fails with ``ModuleNotFoundError`` naming what is missing.

:func:`run_script` runs a script as ``__main__`` with the alias installed, and sets
``STARBURST_RAY_ALIAS=1`` so the worker processes of a cluster started by the script install it too
(a task that imports ``ray`` at run time, or a helper module of the script that does, keeps working).
The script's folder is put first on ``sys.path`` and on ``PYTHONPATH`` (so those workers can import
the script's helper modules too), as ``python script.py`` would.

Command line::

    python -m starburst.compat [run] script.py [args ...]     # same as: starburst run script.py ...
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import traceback
from types import ModuleType
from typing import Sequence

ALIAS = "ray"
TARGET = "starburst"
ENV_VAR = "STARBURST_RAY_ALIAS"


def _target_name(fullname: str) -> str:
    return TARGET + fullname[len(ALIAS):]


class _AliasLoader(importlib.abc.Loader):
    """Loads ``ray.X`` by importing ``starburst.X`` and returning that very module object."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._original_spec = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        # The import machinery overwrites ``__spec__`` of whatever we return; keep the real one.
        self._original_spec = getattr(module, "__spec__", None)
        _alias_imported_submodules()
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Already executed as starburst.X: only undo the machinery's ``__spec__`` rewrite.
        if self._original_spec is not None:
            module.__spec__ = self._original_spec


class RayAliasFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder mapping ``ray`` and ``ray.*`` onto ``starburst`` and ``starburst.*``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = _target_name(fullname)
        if real in sys.modules:
            exists = True
        else:
            try:
                exists = importlib.util.find_spec(real) is not None
            except (ImportError, ValueError):
                exists = False
        if not exists:
            raise ModuleNotFoundError(unsupported_message(fullname), name=fullname)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real), is_package=True)


#: Ray libraries and subsystems starburst does not provide, by the first part after ``ray.``.
_FEATURES = {
    "data": "Ray Data", "train": "Ray Train", "tune": "Ray Tune", "serve": "Ray Serve",
    "rllib": "RLlib", "air": "Ray AIR", "workflow": "Ray Workflows", "job_submission": "Ray Jobs",
    "dashboard": "the Ray dashboard", "autoscaler": "the Ray autoscaler", "cluster_utils": "ray.cluster_utils",
    "client": "Ray Client", "experimental": "Ray's experimental APIs other than tqdm_ray (compiled graphs, channels)",
    "llm": "Ray LLM", "state": "the Ray state API",
    "util.placement_group": "placement groups", "util.scheduling_strategies": "scheduling strategies",
    "util.state": "the Ray state API", "util.collective": "Ray collective communication",
    "util.dask": "Dask on Ray", "util.spark": "Spark on Ray", "util.metrics": "Ray metrics",
    "util.joblib": "the joblib backend", "util.tracing": "Ray tracing",
}


def unsupported_message(fullname: str) -> str:
    """One line naming the Ray feature behind ``fullname`` that starburst lacks."""
    parts = fullname.split(".")
    feature = _FEATURES.get(".".join(parts[1:3])) or (_FEATURES.get(parts[1]) if len(parts) > 1 else None)
    what = f"{feature} ({fullname})" if feature else fullname
    return (f"No module named {fullname!r}: starburst does not support {what}; it runs the Ray Core API "
            "(tasks, actors, objects, ray.util, ray.dag, ray.exceptions) in place of Ray")


_finder: RayAliasFinder | None = None


def install_ray_alias() -> None:
    """Make ``import ray`` (and ``ray.X``) resolve to starburst in this process. Idempotent.

    Raises ``RuntimeError`` if the real Ray was already imported here: the two can't share a name.
    """
    global _finder
    import starburst

    existing = sys.modules.get(ALIAS)
    if existing is not None and existing is not starburst:
        raise RuntimeError("the real 'ray' package is already imported in this process; "
                           "install the starburst alias before anything imports ray")
    if _finder is None or _finder not in sys.meta_path:
        _finder = RayAliasFinder()
        sys.meta_path.insert(0, _finder)
    sys.modules[ALIAS] = starburst
    _alias_imported_submodules()


def _alias_imported_submodules() -> None:
    """Enter every imported ``starburst.X`` in ``sys.modules`` as ``ray.X`` too, so that the two
    names agree there as they do for imports."""
    for name, module in list(sys.modules.items()):
        if name.startswith(TARGET + ".") and module is not None:
            sys.modules.setdefault(ALIAS + name[len(TARGET):], module)


def uninstall_ray_alias() -> None:
    """Undo :func:`install_ray_alias` (mainly for tests): ``import ray`` finds the real Ray again."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    import starburst

    for name, module in list(sys.modules.items()):
        if name == ALIAS or name.startswith(ALIAS + "."):
            if module is starburst or getattr(module, "__name__", "").startswith(TARGET):
                del sys.modules[name]


def run_script(path: str, argv: Sequence[str] = ()) -> None:
    """Run the Python file ``path`` as ``__main__`` with ``sys.argv = [path, *argv]``, ``import ray``
    resolving to starburst here and in the workers of a cluster the script starts.

    Exceptions (including ``SystemExit``) propagate to the caller.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such script: {path}")
    os.environ[ENV_VAR] = "1"
    script_dir = os.path.dirname(os.path.abspath(path))
    paths = os.environ.get("PYTHONPATH", "")
    if script_dir not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = script_dir + (os.pathsep + paths if paths else "")
    install_ray_alias()
    old_argv, old_path0 = sys.argv, list(sys.path)
    sys.argv = [path, *argv]
    # Like ``python script.py``: the script's folder comes first on sys.path (``python -m`` put the
    # working directory there).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = script_dir
    else:
        sys.path.insert(0, script_dir)
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path0


USAGE = "usage: starburst run SCRIPT.py [ARGS ...]   (runs a Ray program on starburst: import ray -> starburst)"


def main_run(argv: list[str]) -> int:
    """``starburst run script.py [args]``: run a Ray script on starburst; returns the exit code.

    0 when the script finishes (or calls ``sys.exit(0)``), the script's ``sys.exit`` code, 1 when it
    raises (the traceback is printed), 2 for bad usage.
    """
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not args or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    path, rest = args[0], args[1:]
    if not os.path.isfile(path):
        print(f"starburst run: no such file: {path}", file=sys.stderr)
        return 2
    try:
        run_script(path, rest)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:  # noqa: BLE001 - the script's error: show it like Python does
        etype, value, tb = sys.exc_info()
        # Drop the runner's own frames (this module, runpy) from the top of the traceback.
        while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        traceback.print_exception(etype, value, tb)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _is_runner_frame(filename: str) -> bool:
    return filename in (__file__, runpy.__file__) or filename.startswith("<frozen runpy")


def _main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "run":
        args = args[1:]
    return main_run(args)


if __name__ == "__main__":
    # Run through the importable module, not this ``__main__`` copy, so there is one alias state.
    from starburst.compat import _main as _real_main

    sys.exit(_real_main())
