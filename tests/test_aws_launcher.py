"""The Fargate node launcher against a moto server: task definitions, RunTask batches, retries,
quota waves, the budget, addresses, and every cleanup path (stop_all, context manager, failed
launches, orphans of a crashed head).

moto only moves a task's lastStatus when the task is described (by default one step per describe,
so a running task "stops" after four describes) and never assigns public IPs. The ``env`` fixture
sets moto's ``ecs::task`` transition to manual with a huge step count, so a task stays RUNNING until
something stops it: a STOPPED task in these tests was stopped by the launcher. Addresses come from
an injected resolver that checks the ENI exists in moto's EC2 and maps it to a test IP.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from botocore.awsrequest import AWSResponse

from starburst.aws import provision
from starburst.aws.launcher import (
    MAX_PER_RUN_TASK,
    BudgetError,
    FargateLauncher,
    LaunchError,
    find_orphans,
    stop_orphans,
)
from starburst.aws.pricing import CostMeter
from starburst.aws.quotas import FakeQuotaSource
from starburst.aws.settings import Settings

pytestmark = pytest.mark.slow  # moto round trips or whole scripts through starburst run: the full tier

HEAD = "203.0.113.5"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst:py311-abc123"
SIZE = (1024, 2048)  # 1 vCPU / 2 GB
CAPACITY_REASON = ("Capacity is unavailable at this time. Please try again later or in a "
                   "different availability zone")


def _moto_api(endpoint: str, path: str, body: dict) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/state-manager/{path}",
                                 data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 201), resp.status


@pytest.fixture
def env(aws):
    """A set-up account (cluster, roles, log group, security group) whose tasks stay RUNNING
    until stopped."""
    _moto_api(aws.endpoint, "set-transition",
              {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}})
    try:
        report = provision.setup(aws.session(), Settings(), head_ip=HEAD)
        yield aws, report.settings
    finally:
        _moto_api(aws.endpoint, "unset-transition", {"model_name": "ecs::task"})


class Calls:
    """Records the parameters of every call of one operation on a client (botocore events)."""

    def __init__(self, client, operation: str):
        self.params: list[dict] = []
        client.meta.events.register(f"provide-client-params.ecs.{operation}", self._record)

    def _record(self, params, **_):
        self.params.append(json.loads(json.dumps(params)))

    def __len__(self):
        return len(self.params)


def _error(code: str, message: str):
    """A before-call response that botocore turns into ClientError(code)."""
    return (AWSResponse("https://ecs", 400, {}, None),
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}})


def _launcher(aws, settings, cluster_id="starburst-test0001", **kwargs):
    sleeps = []
    kwargs.setdefault("sleep", sleeps.append)
    kwargs.setdefault("size", SIZE)
    launcher = FargateLauncher(aws.session(), settings, cluster_id, kwargs.pop("image", IMAGE),
                               **kwargs)
    launcher.sleeps = sleeps
    return launcher


def _states(aws, arns):
    """{arn: (desiredStatus, lastStatus, stoppedReason)} straight from moto."""
    ecs = aws.client("ecs")
    out = {}
    for i in range(0, len(arns), 100):
        for t in ecs.describe_tasks(cluster="starburst", tasks=arns[i:i + 100])["tasks"]:
            out[t["taskArn"]] = (t["desiredStatus"], t["lastStatus"], t.get("stoppedReason", ""))
    assert sorted(out) == sorted(arns)
    return out


def _running(aws, **filters):
    return aws.client("ecs").list_tasks(cluster="starburst", desiredStatus="RUNNING",
                                        **filters)["taskArns"]


def _all_stopped(aws, arns, reason_part=""):
    states = _states(aws, arns)
    assert all(d == "STOPPED" and last == "STOPPED" for d, last, _ in states.values()), states
    assert all(reason_part in why for _, _, why in states.values()), states


def test_task_definition_registered_once(env):
    aws, settings = env
    ecs = aws.client("ecs")
    first = _launcher(aws, settings, arch="arm64")
    arn = first.ensure_task_definition()
    assert first.ensure_task_definition() == arn
    # A later head (same size, arch and image) finds it instead of registering another revision.
    again = _launcher(aws, settings, cluster_id="starburst-test0002", arch="arm64")
    registers = Calls(again.ecs, "RegisterTaskDefinition")
    assert again.ensure_task_definition() == arn and len(registers) == 0
    assert arn.endswith(":1") and first.family.startswith("starburst-1024-2048-arm64-")
    assert ecs.list_task_definitions()["taskDefinitionArns"] == [arn]

    desc = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
    td = desc["taskDefinition"]
    assert td["networkMode"] == "awsvpc" and td["requiresCompatibilities"] == ["FARGATE"]
    assert (td["cpu"], td["memory"]) == ("1024", "2048")
    assert td["executionRoleArn"].endswith(":role/starburst-task-execution-us-east-1")
    assert td["taskRoleArn"].endswith(":role/starburst-task-us-east-1")
    assert td["runtimePlatform"]["cpuArchitecture"] == "ARM64"
    (container,) = td["containerDefinitions"]
    assert container["image"] == IMAGE
    assert [p["containerPort"] for p in container["portMappings"]] == [settings.node_port]
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/starburst/nodes"
    assert {t["key"]: t["value"] for t in desc["tags"]}["starburst:managed"] == "true"

    # Another image (new packages): another family; another size: another family.
    other = _launcher(aws, settings, image=IMAGE + "x", arch="arm64")
    bigger = _launcher(aws, settings, size=(2048, 4096), arch="arm64")
    assert len({arn, other.ensure_task_definition(), bigger.ensure_task_definition()}) == 3


def test_launch_23_makes_3_run_task_calls(env):
    aws, settings = env
    launcher = _launcher(aws, settings)
    calls = Calls(launcher.ecs, "RunTask")
    arns = launcher.launch(23)
    assert len(arns) == 23 and len(set(arns)) == 23
    assert [p["count"] for p in calls.params] == [10, 10, 3]
    assert all(p["count"] <= MAX_PER_RUN_TASK for p in calls.params)

    ec2 = aws.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["starburst-nodes"]}])["SecurityGroups"][0]
    subnets = {s["SubnetId"] for s in ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]}
    for p in calls.params:
        assert p["cluster"] == "starburst" and p["startedBy"] == "starburst-test0001"
        assert p["capacityProviderStrategy"][0]["capacityProvider"] == "FARGATE"
        assert "launchType" not in p and p["propagateTags"]
        net = p["networkConfiguration"]["awsvpcConfiguration"]
        assert net["assignPublicIp"] == "ENABLED" and net["securityGroups"] == [group["GroupId"]]
        assert net["subnets"] and set(net["subnets"]) <= subnets
        assert {t["key"]: t["value"] for t in p["tags"]} == {
            "starburst:managed": "true", "starburst:cluster": "starburst-test0001"}
        (override,) = p["overrides"]["containerOverrides"]
        envs = {e["name"]: e["value"] for e in override["environment"]}
        assert envs["STARBURST_CLUSTER_ID"] == "starburst-test0001"
        assert float(envs["STARBURST_LEASE_S"]) > 0
        assert not [k for k in envs if k.startswith("AWS_")]  # no credentials in a task

    assert sorted(_running(aws, startedBy="starburst-test0001")) == sorted(arns)
    tags = aws.client("ecs").describe_tasks(cluster="starburst", tasks=arns[:1],
                                            include=["TAGS"])["tasks"][0]["tags"]
    assert {"key": "starburst:cluster", "value": "starburst-test0001"} in tags
    assert launcher.stop_all() and _running(aws) == []
    _all_stopped(aws, arns, "shut down")

    with pytest.raises(ValueError, match="credentials"):
        _launcher(aws, settings, env={"AWS_SECRET_ACCESS_KEY": "x"})


def test_throttled_run_task_is_retried_after_a_backoff(env):
    aws, settings = env
    launcher = _launcher(aws, settings)
    calls = Calls(launcher.ecs, "RunTask")
    throttled = []

    def throttle_first(**_):
        if not throttled:
            throttled.append(1)
            return _error("ThrottlingException", "Rate exceeded")
        return None

    launcher.ecs.meta.events.register("before-call.ecs.RunTask", throttle_first)
    arns = launcher.launch(4)
    assert len(arns) == 4 and len(calls) == 2 and throttled == [1]
    assert len(launcher.sleeps) == 1 and 0.5 <= launcher.sleeps[0] <= 1.0  # base 1 s, jittered
    assert sorted(_running(aws)) == sorted(arns)


def test_capacity_shortage_retries_the_missing_tasks(env):
    aws, settings = env
    launcher = _launcher(aws, settings)
    shorted = []

    # The first RunTask places only 4 of its 10 tasks: Fargate reports the other 6 as failures.
    def fewer(params, **_):
        if not shorted:
            params["count"] = 4

    def add_failures(parsed, **_):
        if not shorted:
            shorted.append(1)
            parsed["failures"] = [{"reason": CAPACITY_REASON}] * 6

    launcher.ecs.meta.events.register("provide-client-params.ecs.RunTask", fewer)
    launcher.ecs.meta.events.register("after-call.ecs.RunTask", add_failures)
    calls = Calls(launcher.ecs, "RunTask")  # after `fewer`: records the count actually sent
    arns = launcher.launch(10)
    assert len(arns) == 10 and len(_running(aws)) == 10
    assert [p["count"] for p in calls.params] == [4, 6]  # only the missing ones again
    assert len(launcher.sleeps) == 1


def test_failed_launch_leaves_no_task_behind(env):
    aws, settings = env
    launcher = _launcher(aws, settings, max_attempts=3)
    n = []

    # Two batches start 20 tasks; the third starts 1 and fails the rest for a reason that retrying
    # doesn't fix.
    def third_partial(params, **_):
        n.append(1)
        if len(n) == 3:
            params["count"] = 1

    def third_fails(parsed, **_):
        if len(n) == 3:
            parsed["failures"] = [{"arn": "arn:aws:ecs:us-east-1:123456789012:container/x",
                                   "reason": "ACCESS_DENIED", "detail": "not allowed"}]

    launcher.ecs.meta.events.register("provide-client-params.ecs.RunTask", third_partial)
    launcher.ecs.meta.events.register("after-call.ecs.RunTask", third_fails)
    with pytest.raises(LaunchError, match="ACCESS_DENIED") as info:
        launcher.launch(25)
    assert "stopped the 21 task(s)" in str(info.value)
    assert len(launcher.launched) == 21 and _running(aws) == []
    _all_stopped(aws, launcher.launched, "launch failed")

    # Capacity that never comes back: retried with growing backoff, then a clear error.
    launcher2 = _launcher(aws, settings, cluster_id="starburst-test0002", max_attempts=3)
    launcher2.ecs.meta.events.register(
        "before-call.ecs.RunTask",
        lambda **_: (AWSResponse("https://ecs", 200, {}, None),
                     {"tasks": [], "failures": [{"reason": CAPACITY_REASON}] * 2}))
    with pytest.raises(LaunchError, match="after 3 attempts: Capacity is unavailable"):
        launcher2.launch(2)
    # backoff_base 1 s: attempt 0 waits in [0.5, 1] s, attempt 1 in [1, 2] s (half plus jitter)
    assert len(launcher2.sleeps) == 2 and 0.5 <= launcher2.sleeps[0] <= 1.0 <= launcher2.sleeps[1] <= 2.0


def test_short_quota_launches_what_fits_in_waves(env):
    aws, settings = env
    quota = FakeQuotaSource(on_demand_limit=100, spot_limit=10, spot_usage=4)
    launcher = _launcher(aws, settings, spot=True, quota_source=quota)
    calls = Calls(launcher.ecs, "RunTask")
    arns = launcher.launch(8)
    assert len(arns) == 6 and arns.waves and len(_running(aws)) == 6
    assert "6 of 8" in arns.message and "waves" in arns.message and "spot" in arns.message
    assert launcher.last_message == arns.message
    assert [p["capacityProviderStrategy"][0]["capacityProvider"] for p in calls.params] == [
        "FARGATE_SPOT"]
    tasks = aws.client("ecs").describe_tasks(cluster="starburst", tasks=arns)["tasks"]
    assert {t.get("capacityProviderName") for t in tasks} == {"FARGATE_SPOT"}

    quota.usage[True] = 10  # the quota is used up: nothing starts, and the message says why
    none = launcher.launch(3)
    assert list(none) == [] and "0 of 3" in none.message and len(calls) == 1

    fits = _launcher(aws, settings, cluster_id="starburst-test0002",
                     quota_source=FakeQuotaSource(on_demand_limit=100)).launch(3)
    assert len(fits) == 3 and not fits.waves


def test_budget_cap_refuses_launch(env):
    aws, settings = env
    now = [1000.0]
    meter = CostMeter("us-east-1", clock=lambda: now[0], max_cost=0.01)
    launcher = _launcher(aws, settings, meter=meter)
    calls = Calls(launcher.ecs, "RunTask")
    first = launcher.launch(5)  # 5 x 1 vCPU/2 GB (and their IPv4) x one minute: about $0.004
    assert sorted(meter.running()) == sorted(first)
    with pytest.raises(BudgetError, match=r"max_cost \$0\.01.*nothing was launched"):
        launcher.launch(10)  # would commit about $0.008 more
    assert len(calls) == 1 and len(_running(aws)) == 5
    now[0] += 120
    launcher.stop_all()
    assert meter.running() == [] and meter.report().nodes == 5


def test_stop_all_and_context_manager_stop_everything(env):
    aws, settings = env
    with _launcher(aws, settings) as launcher:
        arns = launcher.launch(12)
        assert len(_running(aws)) == 12
    _all_stopped(aws, arns, "shut down")

    with pytest.raises(RuntimeError, match="boom"):
        with _launcher(aws, settings, cluster_id="starburst-test0002") as launcher:
            arns2 = launcher.launch(3)
            raise RuntimeError("boom")
    _all_stopped(aws, arns2, "RuntimeError")

    # stop_all finds the cluster's tasks by startedBy even when another launcher started them
    # (a restarted head with the same cluster id).
    arns3 = _launcher(aws, settings, cluster_id="starburst-test0003").launch(4)
    other = _launcher(aws, settings, cluster_id="starburst-test0004").launch(2)
    fresh = _launcher(aws, settings, cluster_id="starburst-test0003")
    assert sorted(fresh.stop_all()) == sorted(arns3)
    _all_stopped(aws, arns3)
    assert sorted(_running(aws)) == sorted(other)


def test_find_and_stop_orphans_of_a_crashed_head(env):
    aws, settings = env
    crashed = _launcher(aws, settings, cluster_id="starburst-crashed01").launch(3)
    live = _launcher(aws, settings, cluster_id="starburst-live0001").launch(2)
    # A task in the same ECS cluster that isn't starburst's: never touched.
    ecs = aws.client("ecs")
    ecs.register_task_definition(family="someone-else", networkMode="awsvpc",
                                 requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
                                 containerDefinitions=[{"name": "x", "image": "busybox",
                                                        "memory": 512}])
    foreign = ecs.run_task(cluster="starburst", taskDefinition="someone-else", count=1,
                           launchType="FARGATE", startedBy="someone",
                           networkConfiguration=_launcher(aws, settings).network())["tasks"]
    foreign_arn = foreign[0]["taskArn"]

    assert sorted(find_orphans(aws.session(), settings)) == sorted(crashed + live)
    assert sorted(find_orphans(aws.session(), settings, exclude=["starburst-live0001"])) == sorted(
        crashed)
    stopped = stop_orphans(aws.session(), settings, exclude=["starburst-live0001"])
    assert sorted(stopped) == sorted(crashed)
    _all_stopped(aws, crashed, "down --all")
    assert sorted(_running(aws)) == sorted(live + [foreign_arn])
    assert sorted(stop_orphans(aws.session(), settings)) == sorted(live)
    assert _running(aws) == [foreign_arn]
    assert find_orphans(aws.session(), Settings(name="nothere")) == []  # no such ECS cluster


def test_addresses_come_from_the_task_enis(env):
    aws, settings = env
    ec2 = aws.client("ec2")
    asked = []

    def resolver(eni_ids):
        # The ENIs are real in moto's EC2 (attached to the node security group); moto just never
        # gives them a public IP, so this maps each to a test address.
        asked.append(sorted(eni_ids))
        enis = ec2.describe_network_interfaces(NetworkInterfaceIds=eni_ids)["NetworkInterfaces"]
        assert sorted(e["NetworkInterfaceId"] for e in enis) == sorted(eni_ids)
        assert all(e["Groups"][0]["GroupName"] == "starburst-nodes" for e in enis)
        return {eni: f"198.51.100.{i + 10}" for i, eni in enumerate(sorted(eni_ids))}

    launcher = _launcher(aws, settings, address_resolver=resolver)
    arns = launcher.launch(3)
    found = launcher.addresses(arns)
    assert sorted(found) == sorted(arns) and len(asked[0]) == 3
    assert sorted(found.values()) == [f"198.51.100.{i}:{settings.node_port}" for i in (10, 11, 12)]
    assert launcher.wait_for_addresses(arns) == found

    launcher.stop(arns[:1], reason="scaled down")
    assert sorted(launcher.addresses(arns)) == sorted(arns[1:])  # a stopped node has no address

    # ECS stops a task before it is reachable (say, its image can't be pulled): the reason shows.
    aws.client("ecs").stop_task(cluster="starburst", task=arns[1],
                                reason="CannotPullContainerError: pull access denied")
    with pytest.raises(LaunchError, match="CannotPullContainerError"):
        launcher.wait_for_addresses(arns[1:])

    # The default resolver reads the ENI's public IP, which moto never assigns: no address yet.
    plain = _launcher(aws, settings)
    assert plain.addresses(arns[2:]) == {}
    launcher.stop_all()


def test_cli_down_all_stops_the_tasks_a_crashed_head_left(env, tmp_path):
    import os
    import subprocess
    import sys

    aws, settings = env
    home = tmp_path / "home"
    home.mkdir()
    (home / "aws.json").write_text(json.dumps(settings.to_dict()))
    crashed = _launcher(aws, settings, cluster_id="starburst-crashed01").launch(3)  # never stopped
    assert {s[0] for s in _states(aws, list(crashed)).values()} == {"RUNNING"}
    out = subprocess.run([sys.executable, "-m", "starburst", "down", "--all", "--yes"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, STARBURST_HOME=str(home)))
    assert out.returncode == 0, out.stderr
    assert "stopped 3 starburst task(s)" in out.stdout
    assert {s[0] for s in _states(aws, list(crashed)).values()} == {"STOPPED"}


def test_closing_mid_launch_abandons_it_and_stops_what_it_started(env):
    """Shutdown while a launch waits out a capacity shortage: the launch starts no further batch,
    stops the tasks it had started, and stop_all afterwards finds nothing left."""
    aws, settings = env
    launcher = _launcher(aws, settings)

    def fewer(params, **_):
        params["count"] = min(params["count"], 3)

    def add_failures(parsed, **_):
        parsed["failures"] = [{"reason": CAPACITY_REASON}] * 7

    launcher.ecs.meta.events.register("provide-client-params.ecs.RunTask", fewer)
    launcher.ecs.meta.events.register("after-call.ecs.RunTask", add_failures)
    launcher.sleep = lambda seconds: launcher.close()  # the head shuts down during the backoff
    with pytest.raises(LaunchError, match="shutting down"):
        launcher.launch(10)
    assert len(launcher.launched) == 3 and _running(aws) == []
    assert launcher.stop_all() == []
    with pytest.raises(LaunchError, match="shutting down"):
        launcher.launch(1)  # a closed launcher launches nothing more
    assert _running(aws) == []
