"""``starburst env``: the worker environment, its hash and image, against moto (never real AWS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


from starburst.aws import provision
from starburst.aws.settings import Settings
from starburst.envsync import capture, derived_spec

pytestmark = pytest.mark.slow  # moto/SeaweedFS servers and real processes: the full tier only

MANIFEST = json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "size": 1, "digest": "sha256:" + "b" * 64}, "layers": []})


def cli(*args: str, home, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "starburst", "env", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "STARBURST_HOME": str(home), **env},
                          stdin=subprocess.DEVNULL)


def test_env_without_aws_setup(tmp_path):
    home = tmp_path / "home"
    out = cli(home=home)
    assert out.returncode == 0, out.stderr
    spec = capture()
    assert f"starburst environment {spec.hash()}" in out.stdout
    assert f"{len(spec.packages)}: {len(spec.index)} pinned from the index" in out.stdout
    assert "AWS is not set up on this machine: run 'starburst setup' first" in out.stdout
    assert f"starburst  {spec.starburst.version} ({spec.starburst.kind})" in out.stdout

    data = json.loads(cli("--json", home=home).stdout)
    assert data["hash"] == spec.hash() and data["python"] == spec.python and data["arch"] == spec.arch
    assert data["packages"]["total"] == len(spec.packages)
    assert data["aws"]["status"] == "not set up" and data["image"] is None and data["image_exists"] is None
    assert data["starburst"]["travels"].startswith(("a wheel", "pip installs"))

    derived = json.loads(cli("--json", "--pip", "requests==2.32.0", home=home).stdout)
    assert derived["hash"] == derived_spec(spec, {"pip": ["requests==2.32.0"]}).hash() != spec.hash()
    assert derived["pip"] == ["requests==2.32.0"]

    bad = cli("--pip=--index-url=http://x", home=home)
    assert bad.returncode == 2 and "pip options" in bad.stderr
    both = cli("--build", "--rebuild", home=home)
    assert both.returncode == 2 and "not allowed" in both.stderr
    build = cli("--build", home=home)
    assert build.returncode == 1 and "starburst setup" in build.stderr


def test_env_with_aws(aws, tmp_path):
    home = tmp_path / "home"
    report = provision.setup(aws.session(), Settings(), head_ip="203.0.113.5")
    report.settings.save(home / "aws.json")
    spec = capture()

    data = json.loads(cli("--json", home=home).stdout)
    uri = f"{aws.account_id}.dkr.ecr.us-east-1.amazonaws.com/starburst:{spec.hash()}"
    assert (data["aws"]["status"], data["aws"]["builder"], data["image"], data["image_exists"]) == \
        ("ok", "codebuild", uri, False)
    text = cli(home=home)
    assert text.returncode == 0, text.stderr
    assert uri in text.stdout and "not built yet: 'starburst env --build' builds it (with codebuild)" in text.stdout

    aws.client("ecr").put_image(repositoryName="starburst", imageTag=spec.hash(), imageManifest=MANIFEST)
    assert json.loads(cli("--json", home=home).stdout)["image_exists"] is True
    text = cli(home=home)
    assert "             in ECR" in text.stdout
    # --build with the image present builds nothing
    again = cli("--build", "--json", home=home)
    assert again.returncode == 0 and json.loads(again.stdout)["built"] is False

    # the other architecture's image isn't there: a build with no docker command fails clearly
    aws.client("ecr").batch_delete_image(repositoryName="starburst", imageIds=[{"imageTag": spec.hash()}])
    empty = tmp_path / "empty"
    empty.mkdir()
    nodocker = cli("--build", "--builder", "docker", home=home, PATH=str(empty))
    assert nodocker.returncode == 1
    assert "docker command was not found on PATH" in nodocker.stderr and "CodeBuild" in nodocker.stderr


def test_env_with_aws_but_no_credentials(aws, tmp_path, monkeypatch):
    home = tmp_path / "home"
    Settings().save(home / "aws.json")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    out = cli(home=home)
    assert out.returncode == 1
    assert "no AWS credentials" in out.stderr and "unknown: no AWS credentials" in out.stdout
