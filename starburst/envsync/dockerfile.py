"""The worker image's Dockerfile and build context, generated from an ``EnvSpec``.

Layers, most stable first, so that a changed package rebuilds as little as possible and a derived
spec (``runtime_env`` pip) reuses every layer of its base image:

1. ``FROM --platform=linux/<arch> python:<major.minor>-slim`` (the platform is always explicit: a
   build host of the other architecture would otherwise silently produce the wrong image);
2. system packages, only when needed (``git`` for VCS installs; extra ones on request);
3. ``pip install --no-deps -r requirements.txt`` of the index packages (exact pins; ``--no-deps``
   reproduces the driver's set exactly instead of re-resolving it), then remote-URL and VCS ones;
4. local/editable packages, as wheels the builder puts in the context's ``wheels/`` directory,
   installed by name and version with ``--no-index``;
5. starburst at the driver's version, from the driver's source: a wheel in ``starburst-wheel/``
   (built from the driver's checkout, or repacked from its installed files), or the same VCS
   commit / URL. Never by name from PyPI, where ``starburst`` is an unrelated project;
6. the extra requirements of a derived spec (with their dependencies, constrained to the versions
   above by ``constraints.txt``, so an install that would change the base environment fails);
7. a non-root user, the node's environment defaults, labels (last: a label change must not bust
   the install layers' cache), and the node entrypoint.

The ``CMD`` is the node's entry point, ``python -m starburst.node.entrypoint`` (exec form: the
node is the container's main process and gets ECS's SIGTERM, its drain signal, directly). It
reads its configuration from the environment, which the launcher sets per task; the image
documents the main variables and sets the defaults of two:

- ``STARBURST_STORE`` (required): object store URL, e.g. ``s3://bucket/prefix``;
- ``STARBURST_NODE_PORT`` (default 47000): TCP port the head dials;
- ``STARBURST_LEASE_S`` (default 180): seconds to wait for a head before exiting;
- ``STARBURST_CLUSTER_ID``: the cluster this node belongs to (node ids, TLS names);
- ``STARBURST_NODE_CPUS`` (optional): executors to run (default: the CPUs the container sees);
- ``STARBURST_ADVERTISE`` (optional): the name shown in task output (default: ``$HOSTNAME``).

The full list (drain time, TLS bundle, ...) is in ``starburst.node.entrypoint``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional, Sequence

from .spec import EnvSpec, normalize_name

NODE_PORT_DEFAULT = 47000
LEASE_S_DEFAULT = 180
USER = "starburst"
UID = 1000
#: Where the requirements live in the image (the constraints of derived installs need them).
SPEC_DIR = "/opt/starburst"
WHEELS_DIR = "wheels"
STARBURST_WHEEL_DIR = "starburst-wheel"

#: (name, default or None, meaning): the node's environment, documented in the image.
NODE_ENV = (
    ("STARBURST_STORE", None, "object store URL (required), e.g. s3://bucket/prefix"),
    ("STARBURST_NODE_PORT", str(NODE_PORT_DEFAULT), "TCP port the head dials"),
    ("STARBURST_LEASE_S", str(LEASE_S_DEFAULT), "seconds to wait for a head before exiting"),
    ("STARBURST_CLUSTER_ID", None, "the cluster this node belongs to (set per task)"),
    ("STARBURST_NODE_CPUS", None, "executors to run (default: CPUs the container sees)"),
    ("STARBURST_ADVERTISE", None, "name shown in task output (default: $HOSTNAME)"),
)

_PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}


def base_image_for(spec: EnvSpec) -> str:
    return f"python:{spec.python}-slim"


def platform_for(spec: EnvSpec) -> str:
    return _PLATFORMS[spec.arch]


def requirements_txt(spec: EnvSpec) -> str:
    """The index packages, one ``name==version`` a line, sorted."""
    lines = [f"# starburst environment {spec.hash()}: python {spec.python} {spec.arch}",
             "# index packages (installed with --no-deps: this is the complete set)"]
    lines += [p.requirement() for p in spec.index]
    return "\n".join(lines) + "\n"


def constraints_txt(spec: EnvSpec) -> str:
    """Every pinned package of the base environment, minus those a derived spec's extra
    requirements name (those may change)."""
    overridden = {_requirement_name(r) for r in spec.pip}
    pins = [p for p in (*spec.packages, spec.starburst) if p.kind in ("index", "local", "installed")]
    lines = [p.requirement() for p in sorted(pins, key=lambda p: p.name) if p.name not in overridden]
    return "\n".join(lines) + ("\n" if lines else "")


def _requirement_name(req: str) -> str:
    name = req
    for stop in "[=<>!~ @;":
        name = name.split(stop, 1)[0]
    return normalize_name(name)


def _q(text: str) -> str:
    """A shell word, double-quoted when needed (pip requirements with ``@``, ``>`` ...)."""
    return shlex.quote(text)


#: The module the image runs: the node configured from the task's environment.
NODE_ENTRYPOINT = "starburst.node.entrypoint"


def node_cmd() -> list[str]:
    """The image's ``CMD`` (exec form)."""
    return ["python", "-m", NODE_ENTRYPOINT]


def render(spec: EnvSpec, base_image: Optional[str] = None,
           system_packages: Sequence[str] = ()) -> str:
    """The Dockerfile for ``spec`` (text). ``base_image`` replaces ``python:X.Y-slim`` (it must be
    a Debian-based image with that Python on PATH as ``python``)."""
    base = base_image or base_image_for(spec)
    pip = "pip install --no-cache-dir --disable-pip-version-check"
    out: list[str] = [
        f"# starburst worker image, environment {spec.hash()}",
        (f"# python {spec.python_full} ({spec.arch}), {len(spec.packages)} packages, "
        f"starburst {spec.starburst.version} ({spec.starburst.kind})"),
        "# Generated by starburst.envsync: do not edit; the tag is the environment's hash.",
        f"FROM --platform={platform_for(spec)} {base}",
        "",
        "ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    ]

    apt = sorted(set(system_packages) | ({"git"} if (spec.vcs or spec.starburst.kind == "vcs") else set()))
    if apt:
        out += ["", "# system packages",
                "RUN apt-get update && apt-get install -y --no-install-recommends "
                + " ".join(apt) + " && rm -rf /var/lib/apt/lists/*"]
    else:
        out += ["", "# system packages: none needed beyond the base image"]

    out += ["", f"# {len(spec.index)} index packages, pinned",
            f"COPY requirements.txt constraints.txt {SPEC_DIR}/",
            f"RUN {pip} --no-deps -r {SPEC_DIR}/requirements.txt"]
    direct = spec.urls + spec.vcs
    if direct:
        out += ["", "# packages from URLs and version control, at the driver's commits",
                f"RUN {pip} --no-deps " + " ".join(_q(p.requirement()) for p in direct)]

    if spec.local:
        out += ["", f"# local and editable packages, as wheels the builder puts in {WHEELS_DIR}/:"]
        out += [f"#   {p.name}=={p.version} from {p.path}" + (" (editable)" if p.editable else "")
                for p in spec.local]
        out += [f"COPY {WHEELS_DIR}/ /tmp/{WHEELS_DIR}/",
                f"RUN {pip} --no-deps --no-index --find-links /tmp/{WHEELS_DIR} "
                + " ".join(_q(p.requirement()) for p in spec.local)
                + f" && rm -rf /tmp/{WHEELS_DIR}"]

    sb = spec.starburst
    out += ["", f"# starburst {sb.version}, from the same source as the driver's ({sb.kind})"]
    if sb.kind in ("url", "vcs"):
        out += [f"RUN {pip} --no-deps {_q(sb.requirement())}"]
    else:
        how = (f"built from {sb.path}" if sb.kind == "local"
               else "repacked from the driver's installed files")
        out += [(f"# a wheel {how}, in {STARBURST_WHEEL_DIR}/ (never from PyPI: another project "
                "owns the name)"),
                f"COPY {STARBURST_WHEEL_DIR}/ /tmp/{STARBURST_WHEEL_DIR}/",
                (f"RUN {pip} --no-deps --no-index --find-links /tmp/{STARBURST_WHEEL_DIR} "
                f"{_q(sb.requirement())} && rm -rf /tmp/{STARBURST_WHEEL_DIR}")]

    if spec.pip:
        out += ["", "# runtime_env pip: this derived image's extra requirements",
                f"RUN {pip} -c {SPEC_DIR}/constraints.txt " + " ".join(_q(r) for r in spec.pip)]

    out += ["", "# the node runs as an unprivileged user",
            f"RUN useradd --create-home --uid {UID} --shell /usr/sbin/nologin {USER}",
            f"USER {USER}",
            f"WORKDIR /home/{USER}", ""]
    out += ["# the node's configuration (the launcher overrides these per task):"]
    out += [f"#   {name}: {meaning}" + (f" (default {default})" if default else "")
            for name, default, meaning in NODE_ENV]
    out += [f"#   (the full list: the docstring of {NODE_ENTRYPOINT})"]
    defaults = " ".join(f"{name}={default}" for name, default, _ in NODE_ENV if default)
    out += [f"ENV {defaults}", f"EXPOSE {NODE_PORT_DEFAULT}", ""]
    labels = {
        "dev.starburst.env-hash": spec.hash(),
        "dev.starburst.python": spec.python_full,
        "dev.starburst.arch": spec.arch,
        "dev.starburst.version": sb.version,
        "org.opencontainers.image.title": "starburst worker",
    }
    out += ["LABEL " + " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())]
    out += [f"CMD {json.dumps(node_cmd())}"]
    return "\n".join(out) + "\n"


def build_context(spec: EnvSpec, directory, base_image: Optional[str] = None) -> Path:
    """Write ``Dockerfile``, ``requirements.txt``, ``constraints.txt`` and ``spec.json`` into
    ``directory`` (created if needed), plus empty ``wheels/`` (when there are local packages) and
    ``starburst-wheel/`` (unless starburst comes from a URL or VCS) for the builder to fill.
    Returns the directory."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(render(spec, base_image))
    (path / "requirements.txt").write_text(requirements_txt(spec))
    (path / "constraints.txt").write_text(constraints_txt(spec))
    (path / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n")
    if spec.local:
        (path / WHEELS_DIR).mkdir(exist_ok=True)
    if spec.starburst.kind in ("local", "installed"):
        (path / STARBURST_WHEEL_DIR).mkdir(exist_ok=True)
    return path


def parse(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: comments and blank lines dropped,
    backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


__all__ = ["render", "requirements_txt", "constraints_txt", "build_context", "parse", "node_cmd",
           "base_image_for", "platform_for", "NODE_ENV", "NODE_ENTRYPOINT"]
