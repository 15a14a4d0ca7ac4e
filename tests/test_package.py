"""``import starburst`` is light (the head, node and executors import the package too), and every
public name still resolves, as after ``import ray``."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

CHECK = r"""
import sys
import starburst
heavy = sorted(m for m in ("starburst.api", "starburst.actor", "starburst.remote_function", "starburst.dag",
                           "starburst.util", "starburst.driver.client", "cloudpickle", "grpc") if m in sys.modules)
print("heavy:", heavy)
for name in starburst.__all__:
    getattr(starburst, name)
assert callable(starburst.progress) and callable(starburst.timeline)
from starburst import ObjectRef, remote, get_actor
assert starburst.util.ActorPool and starburst.dag.InputNode and starburst.remote_function.RemoteFunction
assert starburst.exceptions.RayTaskError and starburst._raylet
try:
    starburst.client
except AttributeError as exc:
    assert "not supported" in str(exc), exc
else:
    raise AssertionError("ray.client resolved")
print("ok")
"""


def test_a_plain_import_is_light_and_every_public_name_resolves():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout
    assert proc.stdout.strip().endswith("ok")
