"""The AWS commands of the CLI, against moto in server mode on 127.0.0.1 (never real AWS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

pytestmark = pytest.mark.slow  # moto/SeaweedFS servers and real processes: the full tier only



def cli(*args: str, home) -> subprocess.CompletedProcess:
    env = dict(os.environ, STARBURST_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "starburst", *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_setup_is_idempotent_and_teardown_removes_everything(aws, tmp_path):
    home = tmp_path / "home"
    first = cli("setup", "--region", "us-east-1", "--head-ip", "203.0.113.7", "--show-policies", home=home)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout and '"s3:GetObject"' in first.stdout
    saved = json.loads((home / "aws.json").read_text())
    assert saved["region"] == "us-east-1" and saved["bucket"].startswith("starburst-")
    second = cli("setup", home=home)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout.replace("already existed", "")
    s3 = boto3.client("s3", region_name="us-east-1")
    assert saved["bucket"] in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    down = cli("teardown", "--yes", home=home)
    assert down.returncode == 0, down.stderr
    assert saved["bucket"] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_setup_without_credentials_fails_clearly(aws, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    out = cli("setup", "--region", "us-east-1", home=tmp_path / "home")
    assert out.returncode == 1
    assert "credentials" in out.stderr.lower()


def test_cost_estimate_and_invalid_size(tmp_path):
    ok = cli("cost", "--workers", "50", "--cpu", "4", "--memory", "8GB", "--spot", "--region", "us-east-1",
             "--max-cost", "5", home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "50 workers" in ok.stdout and "$" in ok.stdout
    bad = cli("cost", "--cpu", "4", "--memory", "64GB", home=tmp_path)
    assert bad.returncode == 2
    assert "nearest" in bad.stderr and "16 vCPU/64 GB" in bad.stderr


def test_setup_task_policy_is_saved_and_a_bad_one_refused(aws, tmp_path):
    home = tmp_path / "home"
    iam = boto3.client("iam", region_name="us-east-1")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    arn = iam.create_policy(PolicyName="ReadMyData", PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
    bad = cli("setup", "--region", "us-east-1", "--task-policy", "ReadMyData", home=home)
    assert bad.returncode == 2 and "managed policy ARNs" in bad.stderr
    ok = cli("setup", "--region", "us-east-1", "--head-ip", "203.0.113.7", "--task-policy", arn, home=home)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((home / "aws.json").read_text())["task_policy_arns"] == [arn]
    again = cli("setup", home=home)  # the saved setting is kept
    assert again.returncode == 0 and "detached" not in again.stdout
    cleared = cli("setup", "--task-policy", "", home=home)
    assert cleared.returncode == 0 and "detached ReadMyData" in cleared.stdout


def test_setup_plan_creates_nothing_and_names_what_setup_then_creates(aws, tmp_path):
    home = tmp_path / "home"
    planned = cli("setup", "--plan", "--region", "us-east-1", "--head-ip", "203.0.113.7", home=home)
    assert planned.returncode == 0, planned.stderr
    s3 = boto3.client("s3", region_name="us-east-1")
    assert s3.list_buckets()["Buckets"] == []  # nothing created
    assert not (home / "aws.json").exists()
    lines = [line.split() for line in planned.stdout.splitlines() if line.endswith("will be created")]
    plan = {(words[0], words[1]) for words in lines}
    assert "starburst:managed=true" in planned.stdout and "us-east-1" in planned.stdout
    assert '"sts:AssumeRole"' in planned.stdout  # the policies are part of the plan
    done = cli("setup", "--region", "us-east-1", "--head-ip", "203.0.113.7", home=home)
    assert done.returncode == 0, done.stderr
    created = {(w[0], w[1]) for w in (line.split() for line in done.stdout.splitlines())
               if len(w) >= 3 and w[2] == "created"}
    assert plan == created and len(created) == 10
    again = cli("setup", "--plan", home=home)
    assert "will be created" not in again.stdout and again.stdout.count("exists: setup checks") == 10


def test_destructive_commands_refuse_without_a_terminal(aws, tmp_path):
    home = tmp_path / "home"
    assert cli("setup", "--region", "us-east-1", home=home).returncode == 0
    bucket = json.loads((home / "aws.json").read_text())["bucket"]
    s3 = boto3.client("s3", region_name="us-east-1")
    for args in (("teardown",), ("down", "--all")):
        out = cli(*args, home=home)  # stdin is /dev/null: no terminal
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "--yes" in out.stderr and out.stderr.startswith(f"starburst {args[0]}: ")
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # nothing was deleted
    assert cli("teardown", "--yes", home=home).returncode == 0
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
