"""Environment sync: spec capture and hashing, and the generated worker Dockerfile."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from importlib import metadata

import pytest

import starburst
from starburst.envsync import (EnvSpec, build, build_context, capture, classify, constraints_txt,
                               normalize_name, parse, render, requirements_txt)
from starburst.envsync.dockerfile import node_cmd
from starburst.node.launch import parse_args

EDITABLE = {"dir_info": {"editable": True}, "url": "file:///home/me/proj"}
VCS = {"url": "https://github.com/acme/tool.git",
       "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef0123456789abcdef01234567",
                    "requested_revision": "main"}}

DISTS = [
    ("numpy", "2.4.6", None),
    ("grpcio", "1.85.3", None),
    ("cloudpickle", "3.1.3", None),
    ("Typing_Extensions", "4.12.2", None),
    ("my-proj", "0.3.0", EDITABLE),
    ("acme.tool", "1.0", VCS),
    ("pip", "26.3", None),
    ("setuptools", "80.0", None),
    ("starburst", "0.1.0", {"dir_info": {"editable": True}, "url": "file:///work/main"}),
]


def make(dists=DISTS, python="3.11.7", machine="x86_64", extra_pip=()) -> EnvSpec:
    return build(python, machine, dists, extra_pip)


# -- hashing ---------------------------------------------------------------------------------------

def test_hash_is_deterministic_and_order_independent():
    a = make()
    b = make(list(reversed(DISTS)))
    c = make(DISTS[3:] + DISTS[:3])
    assert a.hash() == b.hash() == c.hash()
    assert a.canonical_json() == b.canonical_json() == c.canonical_json()
    assert re.fullmatch(r"[0-9a-f]{16}", a.hash())
    assert [p.name for p in a.packages] == sorted(p.name for p in a.packages)
    # canonical JSON is compact and sorted, and round-trips to the same hash
    assert json.dumps(json.loads(a.canonical_json()), sort_keys=True, separators=(",", ":")) == \
        a.canonical_json()
    assert EnvSpec.from_json(json.loads(a.canonical_json())).hash() == a.hash()


def _replace(dists, name, version):
    return [(n, version if n == name else v, d) for n, v, d in dists]


def test_hash_changes_exactly_when_the_environment_changes():
    base = make().hash()
    changed = {
        "version": make(_replace(DISTS, "numpy", "2.4.7")),
        "added": make(DISTS + [("six", "1.16.0", None)]),
        "removed": make([d for d in DISTS if d[0] != "grpcio"]),
        "python minor": make(python="3.12.1"),
        "arch": make(machine="arm64"),
        "editable version": make(_replace(DISTS, "my-proj", "0.3.1")),
        "vcs commit": make([(n, v, d if n != "acme.tool" else
                             {**VCS, "vcs_info": {**VCS["vcs_info"], "commit_id": "f" * 40}})
                            for n, v, d in DISTS]),
        "starburst version": make(_replace(DISTS, "starburst", "0.2.0")),
        "editable becomes index": make([(n, v, None if n == "my-proj" else d) for n, v, d in DISTS]),
    }
    hashes = {k: s.hash() for k, s in changed.items()}
    for what, h in hashes.items():
        assert h != base, what
    assert len(set(hashes.values())) == len(hashes)  # and all differ from each other

    unchanged = {
        "python patch": make(python="3.11.9"),
        "arch spelling": make(machine="AMD64"),
        "name spelling": make([("typing-extensions" if n == "Typing_Extensions" else n, v, d)
                               for n, v, d in DISTS]),
        "pip upgraded": make(_replace(DISTS, "pip", "27.0")),
        "wheel appears": make(DISTS + [("wheel", "0.45.0", None)]),
        "editable path": make([(n, v, {**EDITABLE, "url": "file:///elsewhere/proj"}
                                if n == "my-proj" else d) for n, v, d in DISTS]),
        "vcs requested revision": make([(n, v, {**VCS, "vcs_info": {**VCS["vcs_info"],
                                                                      "requested_revision": "v1"}}
                                         if n == "acme.tool" else d) for n, v, d in DISTS]),
        "shadowed duplicate": make(DISTS + [("numpy", "1.0.0", None)]),
        "version whitespace": make(_replace(DISTS, "numpy", " 2.4.6\n")),
    }
    for what, spec in unchanged.items():
        assert spec.hash() == base, what
    assert make(machine="aarch64").hash() == make(machine="arm64").hash()


def test_excluded_tools_and_normalized_names():
    spec = make(DISTS + [("pyobjc-core", "10.0", None), ("appnope", "0.1.4", None)])
    names = [p.name for p in spec.packages]
    assert "pip" not in names and "setuptools" not in names and "starburst" not in names
    assert "pyobjc-core" not in names and "appnope" not in names
    assert set(spec.excluded) == {"pip", "setuptools", "pyobjc-core", "appnope"}
    assert "typing-extensions" in names and "acme-tool" in names
    assert normalize_name("Foo__Bar.baz") == "foo-bar-baz"
    with pytest.raises(ValueError, match="architecture"):
        make(machine="s390x")


# -- classification --------------------------------------------------------------------------------

def test_classification_from_direct_url():
    assert classify("Six", "1.16.0", None).kind == "index"
    ed = classify("my_proj", "0.3.0", EDITABLE)
    assert (ed.kind, ed.editable, ed.path, ed.name) == ("local", True, "/home/me/proj", "my-proj")
    local_dir = classify("p", "1", {"dir_info": {}, "url": "file:///src/my%20p"})
    assert (local_dir.kind, local_dir.editable, local_dir.path) == ("local", False, "/src/my p")
    local_wheel = classify("p", "1", {"archive_info": {}, "url": "file:///tmp/p-1-py3-none-any.whl"})
    assert (local_wheel.kind, local_wheel.path) == ("local", "/tmp/p-1-py3-none-any.whl")
    vcs = classify("acme.tool", "1.0", VCS)
    assert (vcs.kind, vcs.vcs, vcs.url, vcs.commit) == ("vcs", "git", VCS["url"],
                                                        VCS["vcs_info"]["commit_id"])
    assert vcs.requirement() == f"acme-tool @ git+{VCS['url']}@{VCS['vcs_info']['commit_id']}"
    clone = classify("t", "1", {"url": "file:///home/me/clone", "vcs_info": {"vcs": "git",
                                                                           "commit_id": "abc"}})
    assert (clone.kind, clone.path) == ("local", "/home/me/clone")
    arch = classify("z", "2", {"url": "https://example.com/z-2.tar.gz",
                               "archive_info": {"hashes": {"sha256": "00"}}})
    assert (arch.kind, arch.requirement()) == ("url", "z @ https://example.com/z-2.tar.gz")

    spec = make()
    assert [p.name for p in spec.local] == ["my-proj"]
    assert [p.name for p in spec.vcs] == ["acme-tool"]
    assert {p.name for p in spec.index} == {"numpy", "grpcio", "cloudpickle", "typing-extensions"}
    assert (spec.starburst.kind, spec.starburst.version, spec.starburst.path) == \
        ("local", "0.1.0", "/work/main")
    # a plain install of starburst is never reinstalled by name from an index
    plain = make([d for d in DISTS if d[0] != "starburst"] + [("starburst", "0.1.0", None)])
    assert plain.starburst.kind == "installed"


def test_capture_real_environment():
    spec = capture()
    for name in ("numpy", "grpcio", "cloudpickle", "protobuf", "psutil"):
        pkg = spec.get(name)
        assert pkg is not None, name
        assert pkg.version == metadata.version(name), name
    assert spec.starburst.version == starburst.__version__ == metadata.version("starburst")
    assert spec.get("pip") is None and spec.get("setuptools") is None
    assert spec.python == "%d.%d" % sys.version_info[:2]
    assert spec.arch in ("x86_64", "arm64")
    # this checkout is installed editable: starburst is a local package built from it
    direct = metadata.distribution("starburst").read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        assert spec.starburst.kind == "local" and spec.starburst.editable
        assert os.path.exists(os.path.join(spec.starburst.path, "pyproject.toml"))
    # capturing twice, and from another working directory, gives the same spec
    cwd = os.getcwd()
    try:
        os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(starburst.__file__))))
        again = capture()
    finally:
        os.chdir(cwd)
    assert again.canonical_json() == spec.canonical_json() == capture().canonical_json()


# -- runtime_env pip -------------------------------------------------------------------------------

def test_with_pip_derives_a_new_spec():
    base = make()
    derived = base.with_pip(["Requests == 2.32.0"])
    assert derived.hash() != base.hash()
    assert derived.pip == ("requests==2.32.0",)
    assert base.pip == ()  # the base is unchanged
    assert derived.packages == base.packages
    assert base.with_pip(["requests==2.32.0"]).hash() == derived.hash()
    assert base.with_pip(["requests==2.32.1"]).hash() != derived.hash()
    both = base.with_pip(["b==1", "a==2"])
    assert both.hash() == base.with_pip(["a==2"]).with_pip(["b==1"]).hash()
    assert make(extra_pip=["requests==2.32.0"]).hash() == derived.hash()
    assert capture(extra_pip=["requests==2.32.0"]).pip == ("requests==2.32.0",)
    with pytest.raises(ValueError):
        base.with_pip(["--index-url https://evil"])

    text = render(derived)
    steps = parse(text)
    extra = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "requests==2.32.0" in args]
    assert len(extra) == 1
    assert "-c /opt/starburst/constraints.txt" in steps[extra[0]][1]
    sb = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "starburst==" in args)
    assert sb < extra[0]
    # a derived image's first layers are its base image's
    assert text.split("# runtime_env pip")[0].split("\n", 1)[1] == \
        render(base).split("# the node runs as")[0].split("\n", 1)[1]
    # an extra pin of a base package lifts that package's constraint, and only that one
    numpy2 = base.with_pip(["numpy==2.0.0"])
    assert "numpy==" not in constraints_txt(numpy2) and "numpy==2.4.6" in constraints_txt(base)
    assert "grpcio==1.85.3" in constraints_txt(numpy2)


# -- Dockerfile ------------------------------------------------------------------------------------

def test_dockerfile_instruction_sequence():
    spec = make()
    steps = parse(render(spec))
    ops = [op for op, _ in steps]
    assert steps[0] == ("FROM", "--platform=linux/amd64 python:3.11-slim")
    assert ops[-1] == "CMD"

    def index(pred):
        found = [i for i, s in enumerate(steps) if pred(*s)]
        assert len(found) == 1, found
        return found[0]

    git = index(lambda op, a: op == "RUN" and "apt-get install" in a and " git " in a)
    reqs = index(lambda op, a: op == "RUN" and "-r /opt/starburst/requirements.txt" in a)
    assert "--no-cache-dir" in steps[reqs][1]
    vcs = index(lambda op, a: op == "RUN" and "acme-tool @ git+" in a)
    copy_wheels = index(lambda op, a: op == "COPY" and a.startswith("wheels/"))
    wheels = index(lambda op, a: op == "RUN" and "--find-links /tmp/wheels" in a)
    assert "my-proj==0.3.0" in steps[wheels][1] and "--no-index" in steps[wheels][1]
    copy_sb = index(lambda op, a: op == "COPY" and a.startswith("starburst-wheel/"))
    sb = index(lambda op, a: op == "RUN" and "starburst==0.1.0" in a)
    user = index(lambda op, a: op == "USER")
    label = index(lambda op, a: op == "LABEL")
    assert git < reqs < vcs < copy_wheels < wheels < copy_sb < sb < user < label
    assert steps[user][1] not in ("root", "0") and steps[user][1] == "starburst"
    assert f'dev.starburst.env-hash="{spec.hash()}"' in steps[label][1]
    env = " ".join(a for op, a in steps if op == "ENV")
    assert "STARBURST_NODE_PORT=47000" in env and "STARBURST_LEASE_S=180" in env
    cmd = json.loads(steps[-1][1])
    assert cmd == node_cmd() == ["python", "-m", "starburst.node.entrypoint"]
    # the editable package's origin is listed for the builder
    assert "my-proj==0.3.0 from /home/me/proj (editable)" in render(spec)

    # arm64 and another Python minor; no VCS -> no apt layer; plain starburst -> its wheel dir
    other = make([d for d in DISTS if d[0] not in ("acme.tool", "my-proj", "starburst")]
                 + [("starburst", "0.1.0", None)], python="3.12.3", machine="aarch64")
    steps = parse(render(other))
    assert steps[0] == ("FROM", "--platform=linux/arm64 python:3.12-slim")
    assert not any("apt-get" in a for _, a in steps)
    assert not any(a.startswith("wheels/") for op, a in steps if op == "COPY")
    assert any(op == "COPY" and a.startswith("starburst-wheel/") for op, a in steps)
    assert not any(op == "RUN" and "starburst==" in a and "--no-index" not in a for op, a in steps)
    assert parse(render(other, base_image="my.registry/python:3.12-slim"))[0] == \
        ("FROM", "--platform=linux/arm64 my.registry/python:3.12-slim")


def test_requirements_and_build_context(tmp_path):
    spec = make()
    req = requirements_txt(spec)
    lines = [line for line in req.splitlines() if line and not line.startswith("#")]
    assert lines == ["cloudpickle==3.1.3", "grpcio==1.85.3", "numpy==2.4.6",
                     "typing-extensions==4.12.2"]
    out = build_context(spec, tmp_path / "ctx")
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "constraints.txt",
                                                     "requirements.txt", "spec.json",
                                                     "starburst-wheel", "wheels"]
    assert (out / "Dockerfile").read_text() == render(spec)
    assert (out / "requirements.txt").read_text() == req
    assert EnvSpec.from_json(json.loads((out / "spec.json").read_text())).hash() == spec.hash()
    # everything the Dockerfile COPYs is in the context
    for op, args in parse(render(spec)):
        if op == "COPY":
            for src in args.split()[:-1]:
                assert (out / src).exists(), src


def test_cmd_runs_the_node_entrypoint_with_the_image_defaults():
    """The CMD is the node's entry point; with the image's ENV defaults plus what the launcher
    sets per task, the entry point gives arguments that the real node's parser accepts."""
    import importlib.util

    from starburst.envsync.dockerfile import NODE_ENTRYPOINT
    from starburst.node.entrypoint import node_argv

    cmd = node_cmd()
    assert cmd == ["python", "-m", "starburst.node.entrypoint"] == ["python", "-m", NODE_ENTRYPOINT]
    assert importlib.util.find_spec(NODE_ENTRYPOINT) is not None
    steps = parse(render(make()))
    assert steps[-1][0] == "CMD" and json.loads(steps[-1][1]) == cmd
    defaults = dict(kv.split("=", 1) for op, a in steps if op == "ENV"
                    for kv in a.split() if kv.startswith("STARBURST_"))
    assert defaults == {"STARBURST_NODE_PORT": "47000", "STARBURST_LEASE_S": "180"}

    args = parse_args(node_argv({**defaults, "HOSTNAME": "ip-10-0-0-7", "STARBURST_STORE": "s3://b/p",
                                 "STARBURST_CLUSTER_ID": "c1"}))
    assert (args.host, args.port, args.store, args.lease, args.advertise) == \
        ("0.0.0.0", 47000, "s3://b/p", 180.0, "ip-10-0-0-7")
    args = parse_args(node_argv({**defaults, "STARBURST_STORE": "s3://b/p", "STARBURST_NODE_CPUS": "4",
                                 "STARBURST_NODE_PORT": "5000"}))
    assert (args.num_cpus, args.port) == (4.0, 5000)
    with pytest.raises(ValueError, match="STARBURST_STORE"):
        node_argv(defaults)


def _wheel(directory: pathlib.Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel, made here so pip needs no index (tests stay off the network)."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{name.replace('-', '_')}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")


@pytest.mark.slow
def test_install_steps_run_in_a_throwaway_virtualenv(tmp_path):
    """The Dockerfile's own pip steps (index requirements, then a derived spec's extras against
    the constraints), run with --dry-run in a fresh virtualenv, against wheels made locally."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    for name, version in (("sbtest-alpha", "1.2.0"), ("sbtest-beta", "3.4.0"), ("sbtest-beta", "9.9.0")):
        _wheel(wheels, name, version)
    small = build("3.11.7", "x86_64", [("sbtest-alpha", "1.2.0", None), ("starburst", "0.1.0", None)])
    derived = small.with_pip(["sbtest-beta==3.4.0"])
    ctx = build_context(derived, tmp_path / "ctx")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    vpython = str(venv / "bin" / "python")

    steps = [a for op, a in parse((ctx / "Dockerfile").read_text())
             if op == "RUN" and "/opt/starburst/" in a]
    assert len(steps) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    for i, step in enumerate(steps):
        words = shlex.split(step.replace("/opt/starburst", str(ctx)))
        assert words[:2] == ["pip", "install"]
        report = tmp_path / f"report{i}.json"
        proc = subprocess.run([sys.executable, "-m", "pip", "--python", vpython, "install", "--dry-run", "--quiet",
                               "--no-index", "--find-links", str(wheels), "--report", str(report), *words[2:]],
                              capture_output=True, text=True, timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr
        would = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
        assert would == ({"sbtest-alpha": "1.2.0"} if i == 0 else {"sbtest-beta": "3.4.0"}), would
