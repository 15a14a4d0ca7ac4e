"""``starburst doctor`` against the offline rehearsal (moto server, SeaweedFS, the fake ECS agent
running the real node): it passes on a healthy account and, for each induced fault, fails at the
right check with the right advice; its cost is shown and under its budget; and nothing it started
is left running in ECS.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from rehearsal.fargate import put_fake_image

from starburst import cli

pytestmark = pytest.mark.timeout(300)

#: Short timeouts: in the rehearsal a node starts in seconds.
ARGS = ["doctor", "--json", "--timeout", "60", "--lease", "12"]


def test_doctor_before_setup_says_run_setup(tmp_path, monkeypatch, capsys):
    # No AWS endpoint is needed to find this out: one failed check, nothing else tried or started.
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    code = cli.main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False
    first, *rest = report["checks"]
    assert first["name"] == "credentials" and first["status"] == "fail"
    assert "run 'starburst setup'" in first["fix"]
    assert {c["status"] for c in rest} == {"skip"} and "stop" not in [c["name"] for c in rest]
    assert report["cost_usd"] is None


def test_the_checklist_names_cause_and_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("starburst doctor: one 0.25 vCPU / 0.5GB Fargate task, budget $0.0100")
    assert out[1].split()[:2] == ["FAIL", "credentials"]
    assert out[2].strip().startswith("likely cause: no settings in") and out[3].strip().startswith("fix: run")
    assert out[-1] == "doctor: FAILED (credentials); no Fargate task was started"


def _doctor(capsys, *extra: str) -> tuple[int, dict]:
    code = cli.main([*ARGS, *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _brief(report: dict) -> str:
    """The checks that ran, one line each (for assertion messages)."""
    return "\n".join(f"{c['status']} {c['name']}: {c['detail']} | {c['cause']} | {c['fix']}"
                     for c in report["checks"] if c["status"] != "skip")


def _checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def _nothing_left(rehearsal, report: dict) -> None:
    """No task of doctor's cluster RUNNING or PENDING in moto, and its stop check says so."""
    import boto3

    ecs = boto3.client("ecs", region_name="us-east-1")
    cluster = rehearsal.settings.ecs_cluster
    for status in ("RUNNING", "PENDING"):
        assert ecs.list_tasks(cluster=cluster, desiredStatus=status)["taskArns"] == [], status
    arns = ecs.list_tasks(cluster=cluster, startedBy=report["cluster_id"], desiredStatus="STOPPED")["taskArns"]
    assert arns, "doctor's task is not listed as stopped"
    assert {t["lastStatus"] for t in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]} == {"STOPPED"}


def _cost_under_budget(report: dict) -> None:
    assert report["budget_usd"] == 0.01
    assert report["cost_usd"] is not None and 0 < report["cost_usd"] <= report["budget_usd"]
    assert _checks(report)["stop"]["data"]["cost_usd"] == report["cost_usd"]


@pytest.mark.slow
def test_doctor_passes_on_a_healthy_account_and_leaves_nothing_running(rehearsal, tmp_path, capsys):
    with rehearsal.agent(tmp_path / "nodes", firewall=True) as agent:
        code, report = _doctor(capsys)
        checks = _checks(report)
        assert code == 0, _brief(report)
        assert report["ok"] is True
        assert [c["name"] for c in report["checks"]] == [
            "credentials", "resources", "quota", "image", "run_task", "running", "address", "tcp_connect",
            "tls_handshake", "round_trip", "s3", "lease", "stop"]
        assert all(c["status"] in ("pass", "warn") for c in report["checks"]), _brief(report)
        assert all(c["seconds"] > 0 for c in report["checks"])
        assert checks["resources"]["data"]["security_group"].endswith("from 127.0.0.1/32")
        (node,) = agent.nodes.values()
        assert checks["address"]["data"]["address"] == node.address  # the node the agent ran
        assert checks["s3"]["data"]["bytes"] >= 64 * 2**20
        assert checks["round_trip"]["data"]["rtt_ms"] > 0 and checks["round_trip"]["data"]["connect_ms"] > 0
        # The lease: the node exited on its own (the head was killed), not by StopTask.
        assert agent.wait_exited(node.task_arn, timeout=30) == 0
        assert node.stopped_by_agent
        assert checks["stop"]["status"] == "pass" and "STOPPED" in checks["stop"]["detail"]
        _cost_under_budget(report)
        _nothing_left(rehearsal, report)
        assert rehearsal.s3_keys(f"{rehearsal.settings.object_prefix}/{report['cluster_id']}/") == []


@pytest.mark.slow
def test_the_checklist_is_printed_with_timings_and_cost(rehearsal, tmp_path, capsys):
    with rehearsal.agent(tmp_path / "nodes"):
        code = cli.main(["doctor", "--timeout", "60", "--lease", "12"])
    out = capsys.readouterr().out
    assert code == 0, out
    for title in ("credentials", "RunTask", "RUNNING", "TCP connect", "TLS handshake", "S3 64 MiB", "lease"):
        line = next(ln for ln in out.splitlines() if f" {title} " in ln)
        assert line.lstrip().startswith("ok") and " s  " in line, line
    assert "doctor: all checks passed; cost $0.0" in out and "of a $0.0100 budget" in out, out


@pytest.mark.slow
def test_node_unreachable_names_the_security_group_and_the_fix(rehearsal, tmp_path, capsys, monkeypatch):
    # checkip's view of this machine differs from where its connections come from (127.0.0.1):
    # init() admits that address, the security group no longer admits the real one.
    monkeypatch.setenv("STARBURST_HEAD_IP", "198.51.100.7")
    try:
        with rehearsal.agent(tmp_path / "nodes", firewall=True):
            code, report = _doctor(capsys)
    finally:
        monkeypatch.setenv("STARBURST_HEAD_IP", "127.0.0.1")
    checks = _checks(report)
    assert code == 1 and report["ok"] is False
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["tcp_connect"], _brief(report)
    tcp = checks["tcp_connect"]
    assert "did not answer on port" in tcp["detail"] and "198.51.100.7/32" in tcp["detail"]
    assert "another address" in tcp["cause"] and "STARBURST_HEAD_IP" in tcp["fix"]
    assert "starburst setup" in tcp["fix"]
    assert checks["tls_handshake"]["status"] == "skip"
    _cost_under_budget(report)
    _nothing_left(rehearsal, report)


@pytest.mark.slow
def test_old_address_in_the_group_and_this_one_unknown(rehearsal, tmp_path, capsys, monkeypatch):
    # Setup ran from another address, and this machine's can't be learned now (so init() can't
    # re-admit it): the node is unreachable and doctor says to name the address and run setup.
    import boto3

    from starburst.aws import provision as res

    session = boto3.Session(region_name="us-east-1")
    res.allow_head(session, rehearsal.settings, "192.0.2.1")
    monkeypatch.setenv("STARBURST_HEAD_IP", "unknown")  # public_ip() finds nothing (never asks the internet)
    try:
        with rehearsal.agent(tmp_path / "nodes", firewall=True):
            code, report = _doctor(capsys)
    finally:
        monkeypatch.setenv("STARBURST_HEAD_IP", "127.0.0.1")
        res.allow_head(session, rehearsal.settings, "127.0.0.1")
    tcp = _checks(report)["tcp_connect"]
    assert code == 1 and tcp["status"] == "fail", _brief(report)
    assert "192.0.2.1/32" in tcp["detail"]
    assert "could not be learned" in tcp["cause"]
    assert "STARBURST_HEAD_IP" in tcp["fix"] and "starburst setup" in tcp["fix"]
    _nothing_left(rehearsal, report)


@pytest.mark.slow
def test_unreadable_tls_bundle_is_named(rehearsal, tmp_path, capsys):
    # The nodes' role can't read the bucket: the node exits at start (it can't fetch its bundle).
    with rehearsal.agent(tmp_path / "nodes", AWS_SECRET_ACCESS_KEY="not-the-role-key") as agent:
        code, report = _doctor(capsys)
        (node,) = agent.nodes.values()
        agent.wait_exited(node.task_arn)
        # Refused by S3 for its bad key (not any crash that happens to mention the bundle).
        assert re.search(r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId", node.log_text()), \
            node.log_text()[-2000:]
    checks = _checks(report)
    assert code == 1
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert len(failed) == 1 and failed[0] in ("running", "tcp_connect", "tls_handshake"), _brief(report)
    check = checks[failed[0]]
    assert "Essential container in task exited" in check["detail"]
    assert "TLS bundle" in check["cause"] and "s3:GetObject" in check["cause"]
    assert "starburst setup" in check["fix"]
    _cost_under_budget(report)
    _nothing_left(rehearsal, report)


@pytest.mark.slow
def test_missing_image_fails_before_anything_is_launched(rehearsal, tmp_path, capsys):
    import boto3

    from starburst.envsync import capture

    ecr = boto3.client("ecr", region_name="us-east-1")
    tag = capture(machine="x86_64").hash()
    ecr.batch_delete_image(repositoryName=rehearsal.settings.repository, imageIds=[{"imageTag": tag}])
    try:
        with rehearsal.agent(tmp_path / "nodes") as agent:
            code, report = _doctor(capsys, "--no-build")
            assert agent.started_count == 0
    finally:
        put_fake_image(boto3.Session(region_name="us-east-1"), rehearsal.settings.repository, tag)
    checks = _checks(report)
    assert code == 1
    assert checks["image"]["status"] == "fail"
    assert tag in checks["image"]["detail"] and "starburst env --build" in checks["image"]["fix"]
    assert [c["status"] for c in report["checks"][4:]] == ["skip"] * 8  # no task, so no stop check
    assert report["cost_usd"] is None and report["cluster_id"] == ""
    assert os.environ["STARBURST_HEAD_IP"] == "127.0.0.1"


@pytest.mark.slow
def test_sigterm_mid_run_stops_everything_doctor_started(rehearsal, tmp_path):
    import signal
    import subprocess
    import sys

    with rehearsal.agent(tmp_path / "nodes") as agent:
        proc = subprocess.Popen([sys.executable, "-m", "starburst.cli", *ARGS[:-1], "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            (node,) = agent.wait_for_nodes(1, timeout=120)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        report = json.loads(out)
        assert proc.returncode == 1, err[-3000:]
        checks = _checks(report)
        assert checks["interrupted"]["status"] == "fail" and "SIGTERM" in checks["interrupted"]["detail"]
        assert checks["stop"]["status"] == "pass", _brief(report)
        assert agent.wait_exited(node.task_arn, timeout=60) is not None
        assert node.stopped_reason.startswith("starburst")  # stopped by StopTask, not by its lease
    _cost_under_budget(report)
    _nothing_left(rehearsal, report)


@pytest.mark.slow
def test_timeouts_that_could_overrun_the_budget_launch_nothing(rehearsal, tmp_path, capsys):
    with rehearsal.agent(tmp_path / "nodes") as agent:
        code, report = _doctor(capsys, "--timeout", "100000")
        assert agent.started_count == 0
    run_task = _checks(report)["run_task"]
    assert code == 1 and run_task["status"] == "fail", _brief(report)
    assert "over the $0.0100 budget" in run_task["detail"] and "--timeout" in run_task["fix"]
    assert "stop" not in _checks(report) and report["cost_usd"] is None


@pytest.mark.slow
def test_a_missing_setup_resource_says_run_setup_and_launches_nothing(rehearsal, tmp_path, capsys):
    import boto3

    logs = boto3.client("logs", region_name="us-east-1")
    group = rehearsal.settings.log_group
    tags = logs.list_tags_log_group(logGroupName=group)["tags"]
    logs.delete_log_group(logGroupName=group)
    try:
        with rehearsal.agent(tmp_path / "nodes") as agent:
            code, report = _doctor(capsys)
            assert agent.started_count == 0
    finally:
        logs.create_log_group(logGroupName=group, tags=tags)
    resources = _checks(report)["resources"]
    assert code == 1 and resources["status"] == "fail", _brief(report)
    assert f"log-group {group} (not found)" in resources["detail"]
    assert resources["fix"] == "run 'starburst setup' again (it creates what is missing)"
    assert "stop" not in _checks(report) and report["cost_usd"] is None
