"""Environment sync: the driver's Python environment as a spec, its hash (the worker image's
tag), and the worker image's Dockerfile and build context.

    spec = capture()                       # this interpreter, from package metadata
    spec.hash()                            # "3f9c0a..." (16 hex): the image tag
    derived = spec.with_pip(["requests==2.32.0"])   # runtime_env pip: its own hash
    build_context(spec, "ctx/")            # Dockerfile, requirements.txt, constraints.txt, spec.json
"""

from .dockerfile import build_context, constraints_txt, parse, render, requirements_txt
from .spec import EnvSpec, Package, build, capture, classify, normalize_arch, normalize_name

__all__ = ["EnvSpec", "Package", "build", "capture", "classify", "normalize_arch", "normalize_name",
           "render", "requirements_txt", "constraints_txt", "build_context", "parse"]
