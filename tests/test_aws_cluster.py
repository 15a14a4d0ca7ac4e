"""A Fargate cluster's options and the laptop's pre-flight (``starburst.aws.cluster``): errors at
``init()`` before any AWS call, and, against moto with a fake quota source (moto has no Fargate
quotas), the setup check, the estimate, the quota waves message and the increase request offer."""

from __future__ import annotations

import pytest

import starburst
from starburst.aws import provision
from starburst.aws.cluster import check_options, parse_workers, prepare
from starburst.aws.quotas import FakeQuotaSource
from starburst.aws.settings import Settings

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst:abc"


def test_options_are_normalized():
    o = check_options(workers=(0, 8), cpu=4, memory="8GB", arch="aarch64", spot=True, max_cost=3)
    assert (o.workers_min, o.workers_max, o.cpu, o.memory, o.arch) == (0, 8, 4096, 8192, "arm64")
    assert o.spot and o.max_cost == 3.0 and o.idle_timeout == 300 and o.lease_s == 180
    assert o.describe_size() == "4 vCPU/8 GB, arm64, spot"
    assert parse_workers(3) == (3, 3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(cpu=3, memory="8GB"), ValueError, "not a Fargate size; nearest: 2 vCPU/8 GB or 4 vCPU/8 GB"),
    (dict(cpu=1, memory="16GB"), ValueError, "nearest"),
    (dict(workers=(5, 2)), ValueError, "min <= max"),
    (dict(workers=0), ValueError, "max >= 1"),
    (dict(workers="many"), TypeError, "workers must be"),
    (dict(arch="sparc"), ValueError, "x86_64' or 'arm64'"),
    (dict(max_cost=-1), ValueError, "max_cost must be a positive number of dollars"),
    (dict(idle_timeout=0), ValueError, "idle_timeout"),
    (dict(spot="yes"), TypeError, "spot must be True or False"),
])
def test_bad_options_are_refused_with_what_to_write(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_options(**kwargs)


def test_init_refuses_bad_fargate_options_before_any_aws_call(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: a call would fail
    with pytest.raises(ValueError, match="nearest"):
        starburst.init(cluster="fargate", cpu=3, memory="8GB")
    with pytest.raises(ValueError, match="cluster='fargate' only"):
        starburst.init(workers=4)
    with pytest.raises(ValueError, match="use 'local'"):
        starburst.init(cluster="kubernetes")
    with pytest.raises(ValueError, match="num_cpus is for the local cluster"):
        starburst.init(cluster="fargate", num_cpus=4)
    with pytest.raises(ValueError, match="numpy must be the driver's version"):
        starburst.init(cluster="fargate", runtime_env={"pip": ["requests", "NumPy>=2"]})
    assert not starburst.is_initialized()


@pytest.fixture
def account(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STARBURST_HEAD_IP", "203.0.113.5")  # never ask the internet
    return aws


def _prepare(options, source, **kwargs):
    said: list[str] = []
    out = prepare(options, quota_source=source, say=said.append, build_image=lambda *a: IMAGE, **kwargs)
    return out, said


def test_prepare_requires_setup(account):
    with pytest.raises(RuntimeError, match="run 'starburst setup'"):
        _prepare(check_options(), FakeQuotaSource())


@pytest.mark.slow
def test_prepare_fills_in_the_cluster_and_prices_it(account):
    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    out, said = _prepare(check_options(workers=4, cpu=2, memory="4GB", max_cost=2), FakeQuotaSource(64))
    assert out.cluster_id.startswith("starburst-") and out.region == "us-east-1" and out.image == IMAGE
    assert out.quota_workers == 4
    assert len(said) == 1 and said[0].startswith("4 workers x 2 vCPU/4 GB on Fargate")
    assert "max_cost $2.00 lasts" in said[0]


@pytest.mark.slow
def test_a_new_laptop_address_is_admitted_by_the_security_group(account, monkeypatch):
    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    monkeypatch.setenv("STARBURST_HEAD_IP", "198.51.100.7")
    _, said = _prepare(check_options(), FakeQuotaSource(64))
    assert "now admits 198.51.100.7" in said[0]
    group = account.client("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["starburst-nodes"]}])["SecurityGroups"][0]
    cidrs = [r["CidrIp"] for p in group["IpPermissions"] for r in p.get("IpRanges", [])]
    assert cidrs == ["198.51.100.7/32"]


def test_short_quota_runs_in_waves_and_offers_an_increase(account):
    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    source = FakeQuotaSource(on_demand_limit=6)
    asked: list[str] = []
    out, said = _prepare(check_options(workers=10, cpu=1, memory="2GB"), source, interactive=True,
                         ask=lambda q: asked.append(q) or True)
    assert out.quota_workers == 6
    assert any("allows 6 of 10 workers" in line and "waves" in line for line in said)
    assert asked and "quota of 32" in asked[0]
    assert [r.desired for r in source.requests] == [32.0]
    # Next time the open request is remembered, not filed again.
    out, said = _prepare(check_options(workers=10, cpu=1, memory="2GB"), source, interactive=True,
                         ask=lambda q: pytest.fail("asked again"))
    assert any("already open" in line for line in said) and len(source.requests) == 1


def test_quota_request_without_a_terminal_follows_auto_quota_request(account):
    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    declined = FakeQuotaSource(on_demand_limit=4)
    _, said = _prepare(check_options(workers=8, cpu=1, memory="2GB"), declined, interactive=False)
    assert declined.requests == [] and any("auto_quota_request=True" in line for line in said)
    accepted = FakeQuotaSource(on_demand_limit=4)
    _prepare(check_options(workers=8, cpu=1, memory="2GB"), accepted, interactive=False, auto_quota_request=True)
    assert [r.desired for r in accepted.requests] == [32.0]


def test_no_room_at_all_for_the_minimum_is_an_error(account):
    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    full = FakeQuotaSource(on_demand_limit=6, on_demand_usage=6)
    with pytest.raises(RuntimeError, match="no worker can start now"):
        _prepare(check_options(workers=2, cpu=1, memory="2GB"), full, interactive=False)


@pytest.mark.slow
def test_worker_image_is_found_by_hash_and_pip_derives_its_own(account):
    from rehearsal.fargate import put_fake_image

    from starburst.aws.cluster import worker_image
    from starburst.envsync import capture, derived_spec

    settings = provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings
    base = capture(machine="x86_64")
    derived = derived_spec(base, {"pip": ["requests==2.32.0"]})
    assert derived.hash() != base.hash()
    put_fake_image(account.session(), settings.repository, derived.hash())
    said: list[str] = []
    uri = worker_image(account.session(), settings, "x86_64", said.append, ["requests==2.32.0"])
    assert uri.endswith(f"/{settings.repository}:{derived.hash()}") and said == []  # found: no build
    # The plain environment's image is missing: a build is submitted (moto's CodeBuild never
    # pushes anything), and the missing image is an error, not a silent success.
    with pytest.raises(RuntimeError, match="worker image could not be built"):
        worker_image(account.session(), settings, "x86_64", said.append)


def test_prepare_without_credentials_says_the_one_message(account, monkeypatch, tmp_path):
    from starburst.aws.context import NO_CREDENTIALS

    provision.setup(account.session(), Settings(), head_ip="203.0.113.5").settings.save()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    with pytest.raises(RuntimeError) as info:
        prepare(check_options(), session=boto3.Session(region_name="us-east-1"), quota_source=FakeQuotaSource(64),
                say=lambda line: None)
    assert str(info.value) == NO_CREDENTIALS


def test_prepare_refuses_a_region_that_neither_the_table_nor_the_api_prices(account):
    import boto3

    # moto has no Price List API: the API fails, and the table doesn't know Seoul.
    region = "ap-northeast-2"
    provision.setup(boto3.Session(region_name=region), Settings(region=region), head_ip="203.0.113.5").settings.save()
    with pytest.raises(ValueError, match=r"no built-in Fargate prices for region 'ap-northeast-2' \(and the "
                                         r"AWS Pricing API didn't price it: Pricing API failed: .*\); "
                                         r"known: ap-northeast-1, "):
        _prepare(check_options(region=region), FakeQuotaSource(64))
