"""The driver's Python environment as a deterministic spec whose hash is the worker image's tag.

``capture()`` reads the running interpreter and its installed distributions through
``importlib.metadata`` (never by running pip) and sorts every distribution into one of:

- ``index``: installable from a package index as ``name==version``;
- ``url``: installed from a remote archive URL (``name @ https://...``);
- ``vcs``: installed from version control (``name @ git+url@commit``);
- ``local``: editable installs and installs from a local directory or file (``file://`` URLs in
  ``direct_url.json``); the image gets them as wheels that the builder builds from ``path``;
- starburst itself, kept apart (``EnvSpec.starburst``): pinned to the driver's version and installed
  in the image from the same source the driver has: a wheel built from the local checkout
  (``local``), the same VCS commit (``vcs``) or URL (``url``), or, for a plain install, a wheel
  repacked from the installed files (``installed``). Never by name from PyPI: ``starburst`` there
  is an unrelated project.

Build tools that workers never use (pip, setuptools, wheel) and a few packages that only exist on
macOS/Windows (they cannot install in a Linux image) are left out; everything else is kept.

The hash covers exactly what decides the image's contents: the Python minor version, the CPU
architecture, every package's normalized name, version and source (for VCS the URL and commit,
for remote archives the URL), starburst's version and source kind, and the extra ``pip``
requirements of a derived spec. It does not cover the patch version of Python (the base image
follows the minor), local paths (they differ between machines, not between images), or the order
in which distributions were found.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence
from urllib.parse import unquote, urlparse

#: (name, version, parsed direct_url.json or None): what a distribution source yields.
DistInfo = tuple[str, str, Optional[dict]]

#: Installed, but never needed by a worker.
EXCLUDED = frozenset({"pip", "setuptools", "wheel"})
#: Installable only on macOS or Windows: a Linux image can't have them.
PLATFORM_ONLY = frozenset({"appnope", "pywin32", "pywin32-ctypes", "pywinpty", "wmi", "pyobjc"})
_PLATFORM_ONLY_PREFIXES = ("pyobjc-",)

SPEC_VERSION = 1
STARBURST = "starburst"

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
         "arm64": "arm64", "aarch64": "arm64", "arm64e": "arm64", "armv8": "arm64"}


def normalize_name(name: str) -> str:
    """PEP 503 normalization: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def normalize_arch(machine: str) -> str:
    """``platform.machine()`` spellings -> ``x86_64`` or ``arm64``."""
    arch = _ARCH.get(machine.strip().lower())
    if arch is None:
        raise ValueError(f"unsupported CPU architecture {machine!r}: Fargate runs x86_64 and arm64")
    return arch


def _excluded(name: str) -> bool:
    return name in EXCLUDED or name in PLATFORM_ONLY or name.startswith(_PLATFORM_ONLY_PREFIXES)


@dataclass(frozen=True)
class Package:
    """One distribution. ``kind`` is ``index``, ``url``, ``vcs`` or ``local`` (starburst itself:
    ``installed`` instead of ``index``)."""

    name: str
    version: str
    kind: str = "index"
    url: str = ""        # url / vcs: where pip gets it (vcs: without the ``git+`` prefix)
    vcs: str = ""        # vcs: "git", "hg", ...
    commit: str = ""     # vcs: the commit id
    path: str = ""       # local: the project directory or file on the driver
    editable: bool = False

    def requirement(self) -> str:
        """The pip requirement that reinstalls exactly this (local: ``name==version``, resolved
        against the built wheels)."""
        if self.kind == "vcs":
            return f"{self.name} @ {self.vcs}+{self.url}@{self.commit}"
        if self.kind == "url":
            return f"{self.name} @ {self.url}"
        return f"{self.name}=={self.version}"  # index, local, installed

    def hashed(self) -> dict:
        out = {"name": self.name, "version": self.version, "kind": self.kind}
        if self.kind == "vcs":
            out.update(url=self.url, vcs=self.vcs, commit=self.commit)
        elif self.kind == "url":
            out["url"] = self.url
        return out

    def to_json(self) -> dict:
        out: dict[str, str | bool] = {"name": self.name, "version": self.version, "kind": self.kind}
        for key in ("url", "vcs", "commit", "path"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.kind == "local":
            out["editable"] = self.editable
        return out


def classify(name: str, version: str, direct_url: Optional[dict]) -> Package:
    """A distribution's ``Package`` from its name, version and ``direct_url.json`` (PEP 610)."""
    name, version = normalize_name(name), version.strip()
    if not direct_url:
        return Package(name, version)
    url = str(direct_url.get("url", ""))
    scheme = urlparse(url).scheme.lower()
    vcs_info = direct_url.get("vcs_info")
    if vcs_info is not None:
        if scheme == "file":  # a local clone: the commit may exist nowhere else
            return Package(name, version, "local", path=_file_path(url))
        return Package(name, version, "vcs", url=url, vcs=str(vcs_info.get("vcs", "git")),
                       commit=str(vcs_info.get("commit_id", "")))
    dir_info = direct_url.get("dir_info") or {}
    if dir_info.get("editable") or scheme == "file" or scheme == "":
        return Package(name, version, "local", path=_file_path(url),
                       editable=bool(dir_info.get("editable")))
    return Package(name, version, "url", url=url)


def _file_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme.lower() != "file":
        return url
    return unquote(parsed.path)


def _site_dirs() -> set[str]:
    import site
    import sysconfig

    dirs = set()
    for d in [*getattr(site, "getsitepackages", list)(),
              getattr(site, "getusersitepackages", lambda: "")(),
              sysconfig.get_paths().get("purelib", ""), sysconfig.get_paths().get("platlib", "")]:
        if d:
            dirs.add(os.path.realpath(d))
    return dirs


def _source_tree_dirs() -> set[str]:
    """The current directory and the script's directory: metadata found there (a project's own
    ``*.egg-info`` left by a build) describes a source tree, not an installed distribution."""
    dirs = {os.path.realpath(os.getcwd())}
    if sys.path and sys.path[0] not in ("",):
        dirs.add(os.path.realpath(sys.path[0]))
    return dirs


def real_distributions() -> list[DistInfo]:
    """The running interpreter's installed distributions: (name, version, direct_url dict or
    None). When a name appears twice on ``sys.path``, the first (the one ``import`` finds) wins;
    metadata sitting in the current or the script's directory (not a site directory) is ignored,
    so where the driver was started from doesn't change the spec."""
    from importlib import metadata

    site_dirs = _site_dirs()
    ignored = _source_tree_dirs() - site_dirs
    out: list[DistInfo] = []
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if not name:
            continue
        try:
            base = os.path.realpath(str(dist.locate_file("")))
        except Exception:  # noqa: BLE001 - an exotic finder: keep the distribution
            base = ""
        if base in ignored:
            continue
        key = normalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        direct = None
        text = dist.read_text("direct_url.json")
        if text:
            try:
                direct = json.loads(text)
            except ValueError:
                direct = None
        out.append((name, dist.version, direct))
    return out


@dataclass(frozen=True)
class EnvSpec:
    python: str                       # major.minor, e.g. "3.11"
    python_full: str                  # e.g. "3.11.7" (recorded, not hashed)
    arch: str                         # "x86_64" or "arm64"
    packages: tuple[Package, ...]     # sorted by name; starburst not among them
    starburst: Package                # starburst itself, as the driver has it
    pip: tuple[str, ...] = ()         # extra requirements of a derived spec (runtime_env pip)
    excluded: tuple[str, ...] = field(default=(), compare=False)  # left out (recorded only)

    # -- views ---------------------------------------------------------------------------------

    def by_kind(self, kind: str) -> list[Package]:
        return [p for p in self.packages if p.kind == kind]

    @property
    def index(self) -> list[Package]:
        return self.by_kind("index")

    @property
    def local(self) -> list[Package]:
        return self.by_kind("local")

    @property
    def vcs(self) -> list[Package]:
        return self.by_kind("vcs")

    @property
    def urls(self) -> list[Package]:
        return self.by_kind("url")

    def get(self, name: str) -> Optional[Package]:
        key = normalize_name(name)
        if key == STARBURST:
            return self.starburst
        return next((p for p in self.packages if p.name == key), None)

    # -- identity ------------------------------------------------------------------------------

    def hashed(self) -> dict:
        """Exactly what the hash covers."""
        return {
            "spec": SPEC_VERSION,
            "python": self.python,
            "arch": self.arch,
            "packages": [p.hashed() for p in self.packages],
            "starburst": {"version": self.starburst.version, "kind": self.starburst.kind},
            "pip": list(self.pip),
        }

    def hash(self) -> str:
        """sha256 of the canonical hashed content, first 16 hex digits: the image tag."""
        return hashlib.sha256(_canonical(self.hashed()).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {
            "spec": SPEC_VERSION,
            "hash": self.hash(),
            "python": self.python,
            "python_full": self.python_full,
            "arch": self.arch,
            "starburst": self.starburst.to_json(),
            "packages": [p.to_json() for p in self.packages],
            "pip": list(self.pip),
            "excluded": list(self.excluded),
        }

    def canonical_json(self) -> str:
        """Deterministic JSON: sorted keys, sorted packages, no whitespace variation."""
        return _canonical(self.to_json())

    # -- derivation ----------------------------------------------------------------------------

    def with_pip(self, requirements: Iterable[str]) -> "EnvSpec":
        """A derived spec adding ``runtime_env={"pip": [...]}`` requirements: the image is this
        spec's image plus one install layer, with its own hash."""
        reqs = set(self.pip)
        for req in requirements:
            norm = _normalize_requirement(req)
            if norm:
                reqs.add(norm)
        return replace(self, pip=tuple(sorted(reqs)))

    @classmethod
    def from_json(cls, data: dict) -> "EnvSpec":
        def pkg(d: dict) -> Package:
            return Package(d["name"], d["version"], d.get("kind", "index"), d.get("url", ""),
                           d.get("vcs", ""), d.get("commit", ""), d.get("path", ""),
                           bool(d.get("editable", False)))
        return cls(data["python"], data.get("python_full", data["python"]), data["arch"],
                   tuple(pkg(d) for d in data["packages"]), pkg(data["starburst"]),
                   tuple(data.get("pip", ())), tuple(data.get("excluded", ())))


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def _normalize_requirement(req: str) -> str:
    """``Requests == 2.32.0`` -> ``requests==2.32.0`` (name normalized, spaces in the version
    part removed except around ``@`` and ``;``)."""
    req = req.strip()
    if not req or req.startswith("#"):
        return ""
    if req.startswith("-"):
        raise ValueError(f"pip options are not supported in runtime_env pip: {req!r}")
    m = _REQ.match(req)
    if m is None:
        raise ValueError(f"not a pip requirement: {req!r}")
    name, extras, rest = m.groups()
    extras = (extras or "").replace(" ", "").lower()
    if rest.startswith("@") or ";" in rest:
        return f"{normalize_name(name)}{extras} {rest}".strip()
    return f"{normalize_name(name)}{extras}{rest.replace(' ', '')}"


#: ``runtime_env`` keys that need a different image and that starburst can't honour (yet).
UNSUPPORTED_RUNTIME_ENV = ("conda", "uv", "container", "image_uri")
#: Keys of Ray's ``{"pip": {...}}`` form that starburst accepts.
_PIP_DICT_KEYS = frozenset({"packages", "pip_check"})


def pip_requirements(pip) -> list[str]:
    """The requirements of a ``runtime_env`` ``pip`` field in any of Ray's forms: a list of
    requirements, ``{"packages": [...], "pip_check": bool}``, or the path of a requirements file.
    ValueError for a package whose version must stay the driver's (numpy, cloudpickle, ...)."""
    requirements = _parse_pip(pip)
    from .._version import PINNED

    for req in requirements:
        m = _REQ.match(req)
        name = normalize_name(m.group(1)) if m else ""
        if name in PINNED:
            raise ValueError(f"runtime_env pip can't install {req!r}: the workers' {name} must be the "
                             "driver's version. Install it into this environment instead; the image follows it.")
    return requirements


def _parse_pip(pip) -> list[str]:
    if isinstance(pip, dict):
        unknown = set(pip) - _PIP_DICT_KEYS
        if unknown:
            raise ValueError(f"runtime_env pip: {', '.join(sorted(unknown))} not supported (the "
                             "image's pip installs the packages; use 'packages')")
        pip = pip.get("packages") or []
    if isinstance(pip, (str, os.PathLike)):
        try:
            with open(pip, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise ValueError(f"runtime_env pip: can't read the requirements file {pip}: {exc}") from exc
        return [line.split(" #", 1)[0].strip() for line in lines]
    if not isinstance(pip, (list, tuple)) or not all(isinstance(r, str) for r in pip):
        raise ValueError("runtime_env pip must be a list of requirements, {'packages': [...]}, "
                         f"or a requirements file's path, not {type(pip).__name__}")
    return list(pip)


def derived_spec(spec: "EnvSpec", runtime_env: Optional[dict]) -> "EnvSpec":
    """The spec of the image a task with ``runtime_env`` needs: ``spec`` itself when the
    runtime_env installs nothing (env_vars, working_dir, ... need no image of their own), else
    ``spec.with_pip(...)`` with its own hash. ValueError for what can't be honoured (conda, ...)."""
    if not runtime_env:
        return spec
    unsupported = [k for k in UNSUPPORTED_RUNTIME_ENV if runtime_env.get(k)]
    if unsupported:
        raise ValueError(f"runtime_env {', '.join(unsupported)}: not supported; use 'pip' (the "
                         "worker image is built from the driver's environment)")
    pip = runtime_env.get("pip")
    if not pip:
        return spec
    return spec.with_pip(pip_requirements(pip))


def build(python_full: str, machine: str, distributions: Iterable[DistInfo],
          extra_pip: Sequence[str] = (), starburst_version: Optional[str] = None) -> EnvSpec:
    """An ``EnvSpec`` from explicit inputs (the injectable core of ``capture``)."""
    parts = python_full.strip().split(".")
    if len(parts) < 2:
        raise ValueError(f"python version {python_full!r} is not major.minor[.patch]")
    packages: dict[str, Package] = {}
    excluded: set[str] = set()
    starburst: Optional[Package] = None
    for name, version, direct in distributions:
        pkg = classify(name, version, direct)
        if pkg.name == STARBURST:
            starburst = starburst or pkg
            continue
        if _excluded(pkg.name):
            excluded.add(pkg.name)
            continue
        packages.setdefault(pkg.name, pkg)  # first wins, as for import
    if starburst is None:
        from .._version import __version__

        starburst = Package(STARBURST, starburst_version or __version__)
    if starburst.kind == "index":
        # The name ``starburst`` on PyPI belongs to an unrelated project: never install it by
        # name from an index. An installed (non-editable, non-URL) starburst is repacked into a
        # wheel from its installed files by the builder instead.
        starburst = replace(starburst, kind="installed")
    spec = EnvSpec(
        python=".".join(parts[:2]),
        python_full=python_full.strip(),
        arch=normalize_arch(machine),
        packages=tuple(sorted(packages.values(), key=lambda p: p.name)),
        starburst=starburst,
        excluded=tuple(sorted(excluded)),
    )
    return spec.with_pip(extra_pip) if extra_pip else spec


def capture(extra_pip: Sequence[str] = (), distributions: Optional[Iterable[DistInfo]] = None,
            python_full: Optional[str] = None, machine: Optional[str] = None) -> EnvSpec:
    """The running driver's environment. Every input can be given instead (tests)."""
    return build(
        python_full if python_full is not None else platform.python_version(),
        machine if machine is not None else platform.machine(),
        real_distributions() if distributions is None else distributions,
        extra_pip,
    )
