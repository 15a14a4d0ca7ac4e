"""Filling a build context's wheel directories: what the generated Dockerfile installs with
``--no-index`` (see ``dockerfile.py``).

- ``wheels/``: one wheel per local package of the spec (editable installs and installs from a
  local directory, built with ``pip wheel --no-deps`` from the driver's directory; a local ``.whl``
  file is copied);
- ``starburst-wheel/``: starburst itself, built the same way from the driver's checkout (kind
  ``local``), or repacked from the driver's installed files (kind ``installed``: a plain install,
  whose source may be nowhere else; ``starburst`` on PyPI is an unrelated project).

Every wheel is checked against the spec: its name and version must be the ones the driver has
installed (the image installs ``name==version``), so a project whose version changed since it was
installed fails here, with a message saying what to do, instead of deep inside the image build.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .dockerfile import STARBURST_WHEEL_DIR, WHEELS_DIR
from .spec import EnvSpec, Package, normalize_name

Progress = Callable[[str], None]

#: A fixed timestamp for repacked wheels' entries (zip can't store times before 1980): the same
#: installed files give the same wheel bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class WheelError(RuntimeError):
    """A wheel for the image could not be made; the message says which package and why."""


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(normalized name, version) of a wheel file name; ValueError if it isn't one."""
    m = _WHEEL_NAME.match(os.path.basename(filename))
    if m is None:
        raise ValueError(f"not a wheel file name: {filename!r}")
    return normalize_name(m["name"]), m["version"]


def _same_version(a: str, b: str) -> bool:
    return a.strip().lower().replace("_", "-") == b.strip().lower().replace("_", "-")


def _find_wheel(directory: Path, pkg: Package) -> Path | None:
    for whl in sorted(directory.glob("*.whl")):
        try:
            name, version = wheel_name_version(whl.name)
        except ValueError:
            continue
        if name == pkg.name and _same_version(version, pkg.version):
            return whl
    return None


def pip_wheel_command(path: str, dest: Path, python: str = sys.executable,
                      build_isolation: bool = True) -> list[str]:
    cmd = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
           "--no-cache-dir", "--wheel-dir", str(dest)]
    if not build_isolation:
        cmd.append("--no-build-isolation")
    return cmd + [path]


def build_wheel(pkg: Package, dest: Path, python: str = sys.executable,
                build_isolation: bool = True, timeout: float = 900) -> Path:
    """A wheel of a local package in ``dest``: built from its directory, or its ``.whl`` copied."""
    dest.mkdir(parents=True, exist_ok=True)
    source = pkg.path
    if not source or not os.path.exists(source):
        raise WheelError(
            f"{pkg.name} {pkg.version} was installed from {source or 'a local path'}, which is not "
            "on this machine any more: reinstall it from where it is now (or uninstall it) so "
            "that the workers' image can be built")
    if os.path.isfile(source):
        if not source.endswith(".whl"):
            raise WheelError(f"{pkg.name} {pkg.version} was installed from the archive {source}: "
                             "only local wheels and project directories can go into the image; "
                             "install it from a wheel or a directory")
        copied = dest / os.path.basename(source)
        shutil.copyfile(source, copied)
        found = _find_wheel(dest, pkg)
        if found is None:
            raise WheelError(f"{source} is not a wheel of {pkg.name} {pkg.version}")
        return found
    # pip builds in the project's directory; setuptools leaves build/ there, and a stale build/
    # can put files deleted since into later wheels: one that wasn't there before goes again.
    with source_lock(source), tempfile.TemporaryDirectory(prefix="starburst-wheel-") as tmp:
        return _build_in(source, pkg, dest, Path(tmp), python, build_isolation, timeout)


def _build_in(source: str, pkg: Package, dest: Path, tmp: Path, python: str, build_isolation: bool,
              timeout: float) -> Path:
    build_dir = Path(source) / "build"
    had_build_dir = build_dir.exists()
    cmd = pip_wheel_command(source, tmp, python, build_isolation)
    env = {k: v for k, v in os.environ.items() if k != "PIP_REQUIRE_VIRTUALENV"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        if not had_build_dir:
            shutil.rmtree(build_dir, ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise WheelError(f"building a wheel of {pkg.name} from {source} failed "
                         f"(pip exit {proc.returncode}):\n{tail}")
    built = sorted(tmp.glob("*.whl"))
    match = _find_wheel(tmp, pkg)
    if match is None:
        got = ", ".join(" ".join(wheel_name_version(w.name)) for w in built) or "nothing"
        raise WheelError(
            f"the wheel built from {source} is {got}, but the driver has {pkg.name} "
            f"{pkg.version} installed: reinstall it ('pip install -e {source}') so that "
            "the driver and the workers run the same version")
    out = dest / match.name
    shutil.move(str(match), out)
    return out


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_installed(dist_name: str, dest: Path) -> Path:
    """A wheel rebuilt from an installed distribution's files (its ``RECORD``): for a package
    whose source exists only as installed files. Pure-Python only (``py3-none-any``); files
    outside site-packages (console scripts) and byte code are left out; the wheel's ``RECORD``
    is written anew."""
    from importlib import metadata

    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise WheelError(f"{dist_name} is not installed: nothing to repack") from exc
    files = dist.files
    if not files:
        raise WheelError(f"{dist_name} has no RECORD of its installed files: reinstall it")
    name, version = dist.metadata["Name"], dist.version
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info_dir = f"{stem}.dist-info"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{stem}-py3-none-any.whl"
    entries: list[tuple[str, bytes]] = []
    for f in sorted(files, key=str):
        rel = str(f).replace(os.sep, "/")
        if rel.startswith(("../", "/")) or "__pycache__/" in rel or rel.endswith(".pyc"):
            continue
        parts = rel.split("/")
        if parts[0].endswith(".dist-info"):
            if parts[-1] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            rel = "/".join([info_dir, *parts[1:]])
        path = Path(str(f.locate()))
        if not path.is_file():
            continue
        if path.suffix in (".so", ".pyd", ".dylib"):
            raise WheelError(f"{dist_name} has compiled files ({rel}): it can't be repacked as a "
                             "pure-Python wheel; install it from its source instead")
        entries.append((rel, path.read_bytes()))
    names = {rel for rel, _ in entries}
    if f"{info_dir}/WHEEL" not in names:
        entries.append((f"{info_dir}/WHEEL", (b"Wheel-Version: 1.0\nGenerator: starburst-repack\n"
                                             b"Root-Is-Purelib: true\nTag: py3-none-any\n")))
    if f"{info_dir}/METADATA" not in names:
        raise WheelError(f"{dist_name}'s installed files have no METADATA: reinstall it")
    record = [f"{rel},{_record_hash(data)},{len(data)}" for rel, data in entries]
    record.append(f"{info_dir}/RECORD,,")
    entries.append((f"{info_dir}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as whl:
        for rel, data in entries:
            info = zipfile.ZipInfo(rel, _ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
    return out


def fill_wheels(spec: EnvSpec, context: Path, python: str = sys.executable,
                build_isolation: bool = True, progress: Progress | None = None) -> list[Path]:
    """Put the wheels the Dockerfile installs into ``context`` (made by ``build_context``)."""
    say = progress or (lambda _msg: None)
    out: list[Path] = []
    for pkg in spec.local:
        say(f"wheel of {pkg.name} {pkg.version} from {pkg.path}")
        out.append(build_wheel(pkg, context / WHEELS_DIR, python, build_isolation))
    sb = spec.starburst
    if sb.kind == "local":
        say(f"wheel of starburst {sb.version} from {sb.path}")
        out.append(build_wheel(sb, context / STARBURST_WHEEL_DIR, python, build_isolation))
    elif sb.kind == "installed":
        say(f"wheel of starburst {sb.version} repacked from its installed files")
        whl = repack_installed("starburst", context / STARBURST_WHEEL_DIR)
        _, version = wheel_name_version(whl.name)
        if not _same_version(version, sb.version):
            raise WheelError(f"the installed starburst is {version}, the spec says {sb.version}")
        out.append(whl)
    return out


_source_guard = threading.Lock()
_source_locks: dict[str, threading.RLock] = {}
_source_depth: dict[str, int] = {}
_source_files: dict[str, IO[str]] = {}


@contextlib.contextmanager
def source_lock(source: str | os.PathLike) -> Iterator[None]:
    """Builds from one project directory, one at a time across this user's processes (pip builds
    inside it: another build's build/ would look like one to keep, or vanish under this one).
    Re-entrant in a thread. Without a lock file (no runtime directory) builds are not serialized."""
    key = os.path.realpath(source)
    with _source_guard:
        rlock = _source_locks.setdefault(key, threading.RLock())
    with rlock:
        if not _source_depth.get(key):
            try:
                from .. import config

                name = hashlib.sha256(key.encode()).hexdigest()[:16]
                lock_file = open(config.runtime_dir() / f"wheel-{name}.lock", "a+")
            except (OSError, ValueError):
                pass
            else:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                _source_files[key] = lock_file
        _source_depth[key] = _source_depth.get(key, 0) + 1
        try:
            yield
        finally:
            _source_depth[key] -= 1
            if not _source_depth[key]:
                held = _source_files.pop(key, None)
                if held is not None:
                    held.close()


__all__ = ["WheelError", "build_wheel", "source_lock", "repack_installed", "fill_wheels", "pip_wheel_command",
           "wheel_name_version"]
