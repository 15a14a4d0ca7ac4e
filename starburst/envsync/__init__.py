"""Environment sync: the driver's Python environment as a spec, its hash (the worker image's
tag), the worker image's Dockerfile and build context, and building the image when its tag is new.

    spec = capture()                       # this interpreter, from package metadata
    spec.hash()                            # "3f9c0a..." (16 hex): the image tag
    derived = derived_spec(spec, {"pip": ["requests==2.32.0"]})   # runtime_env pip: its own hash
    build_context(spec, "ctx/")            # Dockerfile, requirements.txt, constraints.txt, spec.json

    from starburst.aws.image import ensure_image          # building the image is AWS's part
    uri = ensure_image(boto3.Session(), Settings.load(), spec)   # builds only when the tag is new
"""

from .dockerfile import build_context, constraints_txt, parse, render, requirements_txt
from .spec import (EnvSpec, Package, build, capture, classify, derived_spec, normalize_arch,
                   normalize_name)

__all__ = ["EnvSpec", "Package", "build", "capture", "classify", "derived_spec", "normalize_arch",
           "normalize_name", "render", "requirements_txt", "constraints_txt", "build_context",
           "parse"]
