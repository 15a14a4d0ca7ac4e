"""Every command with bad values, without AWS credentials, without a terminal, and into a closed
pipe: exit codes and one-line messages. No AWS endpoint is reachable or needed: each case is
refused before any call, or botocore finds no credentials before connecting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # moto round trips or whole scripts through starburst run: the full tier

NO_CREDENTIALS = ("no AWS credentials found: configure them ('aws configure', AWS_PROFILE, or "
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and run this again")


def _env(home, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(STARBURST_HOME=str(home), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    return env


def _run(args, tmp_path, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "aws.json").write_text(json.dumps({"region": "us-east-1"}))
    return subprocess.run([sys.executable, "-m", "starburst", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, env=_env(home, tmp_path), stdin=subprocess.DEVNULL)


BAD_VALUES = [
    (["up", "--num-cpus", "-1"], "num_cpus must be a positive number"),
    (["up", "--num-cpus", "0"], "num_cpus must be a positive number"),
    (["up", "--port", "99999"], "is not a TCP port"),
    (["up", "--cluster", "fargate", "--workers", "x"], "--workers 'x'"),
    (["up", "--cluster", "fargate", "--cpu", "3", "--memory", "8GB"], "nearest"),
    (["up", "--cluster", "fargate", "--max-cost", "-5"], "max_cost must be a positive number"),
    (["up", "--cluster", "mars"], "invalid choice"),
    (["cost", "--max-cost", "-5"], "max_cost must be a positive number"),
    (["cost", "--workers", "0"], "workers=0"),
    (["cost", "--cpu", "4", "--memory", "64GB"], "nearest"),
    (["cost", "--region", "mars-1"], "known: ap-northeast-1"),
    (["cost", "--region", "ap-northeast-2"], "no built-in Fargate prices"),
    (["status", "--bogus"], "unrecognized arguments"),
    (["down", "--timeout", "soon"], "invalid float value"),
    (["setup", "--head-ip"], "expected one argument"),
    (["setup", "--task-policy", "not-an-arn"], "task_policy_arns"),
    (["teardown", "--bogus"], "unrecognized arguments"),
    (["quota", "--bogus"], "unrecognized arguments"),
    (["env", "--build", "--rebuild"], "not allowed with"),
    (["env", "--pip", "!!"], "starburst env:"),
    (["bogus"], "invalid choice"),
]


@pytest.mark.parametrize("args,needle", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_usage_errors_in_one_line(tmp_path, args, needle):
    out = _run(args, tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert lines[0].startswith("starburst"), out.stderr


NEEDS_CREDENTIALS = [["setup"], ["setup", "--plan"], ["teardown", "--yes"], ["quota"], ["down", "--all", "--yes"],
                     ["env", "--build"]]


@pytest.mark.parametrize("args", NEEDS_CREDENTIALS, ids=[" ".join(a) for a in NEEDS_CREDENTIALS])
def test_missing_credentials_one_message_everywhere(tmp_path, args):
    out = _run(args, tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(NO_CREDENTIALS), out.stderr
    assert lines[0].startswith(f"starburst {args[0]}: "), out.stderr


@pytest.mark.parametrize("args", [["teardown"], ["down", "--all"]])
def test_destructive_commands_without_a_terminal_refuse(tmp_path, args):
    out = _run(args, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --yes" in lines[0], out.stderr


@pytest.mark.parametrize("args", [["cost", "--workers", "3"], ["--help"], ["status", "--help"]])
def test_a_closed_pipe_is_quiet(tmp_path, args):
    read, write = os.pipe()
    os.close(read)  # the reader ('| head') is gone before we write a byte
    try:
        out = _run(args, tmp_path, stdout=write)
    finally:
        os.close(write)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_no_cluster_running(tmp_path):
    for args in (["status"], ["down"]):
        out = _run(args, tmp_path)
        assert out.returncode == 3 and len(out.stderr.strip().splitlines()) == 1, out.stderr
