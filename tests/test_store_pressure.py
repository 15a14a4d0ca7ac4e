"""The local store under pressure and on macOS-like machines, with real processes: no /dev/shm, a
100-character TMPDIR, a home with a space, a cap with spilling to disk, a full disk, dead nodes."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

WORKLOAD = """
import os, sys, json, numpy as np, starburst
starburst.init(num_cpus=2)

@starburst.remote
def total(a):
    return float(a.sum())

arrays = [starburst.put(np.full(1_000_000, i, dtype=np.float64)) for i in range(5)]   # 8 MB each
assert starburst.get([total.remote(a) for a in arrays]) == [i * 1_000_000.0 for i in range(5)]
store = starburst._runtime.peek_client().store
stored = [n for n in os.listdir(store.directory) if not n.startswith(".") and os.path.isfile(
    os.path.join(store.directory, n))]
spilled = os.listdir(store.spill_directory) if store.spill_directory else []
print(json.dumps({"store": store.directory, "spill": store.spill_directory, "in_memory": len(stored),
                  "spilled": len(spilled)}), flush=True)
del arrays
starburst.shutdown()
"""


def _mount_ns_available() -> bool:
    return os.getuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode == 0


def _run(source: str, env: dict, mounts: str = "", timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``source`` in a fresh interpreter; ``mounts``: shell commands run first in a private mount
    namespace (to hide /dev/shm or make small file systems)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    if mounts:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'{mounts} && exec "{sys.executable}" -c "$0"', source]
    else:
        cmd = [sys.executable, "-c", source]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.mark.slow
def test_no_dev_shm_a_100_character_tmpdir_and_a_home_with_a_space(tmp_path):
    base = tempfile.mkdtemp(prefix="sb-mac-")
    try:
        tmpdir = base + "/" + "t" * (99 - len(base))
        os.makedirs(tmpdir)
        assert len(tmpdir) == 100
        home = tmp_path / "my home"
        env = {"TMPDIR": tmpdir, "STARBURST_HOME": str(home)}
        if _mount_ns_available():  # really hide /dev/shm, as on macOS
            proc = _run(WORKLOAD, env, mounts="mount -t tmpfs -o ro,size=1m tmpfs /dev/shm")
        else:
            proc = _run(WORKLOAD, dict(env, STARBURST_SHM_DIR=""))
        assert proc.returncode == 0, proc.stderr[-3000:]
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        assert info["store"].startswith(tmpdir + "/"), info
        assert info["in_memory"] == 5 and info["spill"] == "", info
        assert not os.path.exists(info["store"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_objects_beyond_the_cap_spill_to_disk_and_are_read_back(tmp_path):
    proc = _run(WORKLOAD, {"STARBURST_HOME": str(tmp_path / "home"), "STARBURST_OBJECT_STORE_BYTES": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["spill"] and info["in_memory"] == 0 and info["spilled"] == 5, info
    assert not os.path.exists(info["spill"]) and not os.path.exists(info["store"])


@pytest.mark.slow
def test_a_full_memory_store_spills_and_a_full_disk_says_what_to_do(tmp_path):
    if not _mount_ns_available():
        pytest.fail("this test needs a private mount namespace (root and unshare -m) to make small file systems")
    source = """
import numpy as np, starburst
from starburst.exceptions import ObjectStoreFullError
starburst.init(num_cpus=1)
refs = [starburst.put(np.zeros(1_000_000)) for _ in range(4)]     # 32 MB: more than the 20 MB "shm"
store = starburst._runtime.peek_client().store
import os
print("spilled", len(os.listdir(store.spill_directory)))
more = []
try:
    for _ in range(10):
        more.append(starburst.put(np.zeros(1_000_000)))  # and more than the 40 MB "disk"
except ObjectStoreFullError as exc:
    print("full:", exc)
try:
    starburst.get(starburst.remote(lambda: np.ones(1_000_000)).remote())   # a result with no room either
except ObjectStoreFullError as exc:
    print("task result full:", str(exc).splitlines()[0])
assert float(starburst.get(starburst.remote(lambda a: a.sum() + 1).remote(refs[3]))) == 1.0
starburst.shutdown()
"""
    mounts = ("mkdir -p /tmp/sb-small-shm /tmp/sb-small-disk && mount -t tmpfs -o size=20m tmpfs /tmp/sb-small-shm"
              " && mount -t tmpfs -o size=40m tmpfs /tmp/sb-small-disk")
    proc = _run(source, {"STARBURST_HOME": str(tmp_path / "home"), "STARBURST_SHM_DIR": "/tmp/sb-small-shm",
                         "TMPDIR": "/tmp/sb-small-disk"}, mounts=mounts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spilled = int(proc.stdout.split("spilled ")[1].split()[0])
    assert spilled >= 1, proc.stdout
    assert "full: the object store is full" in proc.stdout and "del ref" in proc.stdout, proc.stdout
    assert "task result full:" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.slow
def test_a_dead_nodes_files_are_removed_at_once(tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))

    def status() -> dict:
        out = subprocess.run([sys.executable, "-m", "starburst", "status", "--json"], capture_output=True,
                             text=True, timeout=60, env=env)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    up = subprocess.run([sys.executable, "-m", "starburst", "up", "--num-cpus", "1"], capture_output=True,
                        text=True, timeout=120, env=env)
    assert up.returncode == 0, up.stderr
    try:
        cluster_dir = pathlib.Path(json.loads((home / "head.json").read_text())["address"][len("unix:"):]).parent
        first = status()["nodes"][0]
        old_dirs = glob.glob(str(cluster_dir / f"{first['id']}-*"))
        assert len(old_dirs) == 1, old_dirs
        os.kill(first["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = status().get("nodes", [])
            if nodes and nodes[0]["pid"] != first["pid"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no replacement node")
        assert not os.path.exists(old_dirs[0]), "the dead node's directory is still there"
    finally:
        subprocess.run([sys.executable, "-m", "starburst", "down"], capture_output=True, timeout=60, env=env)
