"""Prices, estimates, the cost meter and the budget check; the Pricing API source is driven with
botocore's Stubber (moto has no Pricing API), so nothing leaves the machine."""

from __future__ import annotations

import json

import boto3
import pytest
from aws_fixtures import fake_credentials
from botocore.stub import Stubber

from starburst.aws import pricing
from starburst.aws.pricing import (
    PRICE_TABLE,
    PRICES_AS_OF,
    PUBLIC_IPV4_HOUR,
    BuiltinPriceSource,
    CostMeter,
    PricingApiPriceSource,
    Rates,
    UnknownRegionError,
    billed_seconds,
    describe_estimate,
    estimate_hourly,
    task_cost,
    would_exceed,
)


IPV4 = 0.005  # USD per public IPv4 address-hour: every starburst task has one


@pytest.fixture(autouse=True)
def dummy_aws(monkeypatch, tmp_path):
    fake_credentials(monkeypatch, tmp_path)


class FakeClock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the table ---------------------------------------------------------------------------------

REQUIRED_REGIONS = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"]


@pytest.mark.parametrize("region", REQUIRED_REGIONS)
def test_table_has_every_combination_with_sane_prices(region):
    for arch in ("x86_64", "arm64"):
        on_demand = PRICE_TABLE[region][(arch, False)]
        spot = PRICE_TABLE[region][(arch, True)]
        # Realistic list prices: a few cents per vCPU-hour, ~1/9 of that per GB-hour.
        assert 0.02 < on_demand.vcpu_hour < 0.08
        assert 0.002 < on_demand.gb_hour < 0.01
        assert 5 < on_demand.vcpu_hour / on_demand.gb_hour < 15
        # Spot is a deep discount (AWS: up to 70%), never a premium.
        assert 0.2 < spot.vcpu_hour / on_demand.vcpu_hour < 0.5
        assert 0.2 < spot.gb_hour / on_demand.gb_hour < 0.5
    # Graviton is cheaper than x86.
    assert PRICE_TABLE[region][("arm64", False)].vcpu_hour < PRICE_TABLE[region][("x86_64", False)].vcpu_hour


def test_known_published_rates():
    us = PRICE_TABLE["us-east-1"]
    assert us[("x86_64", False)] == Rates(0.04048, 0.004445)
    assert us[("arm64", False)] == Rates(0.03238, 0.00356)
    assert PRICE_TABLE["eu-central-1"][("x86_64", False)] == Rates(0.04656, 0.00511)
    assert PRICE_TABLE["ap-southeast-1"][("x86_64", False)] == Rates(0.05056, 0.00553)
    assert pricing.PRICES_AS_OF and "fargate/pricing" in pricing.PRICES_SOURCE


@pytest.mark.parametrize("region", ["mars-1", "ap-northeast-2", "eu-central-2"])
def test_an_unknown_region_is_an_error_that_lists_the_known_ones(region):
    with pytest.raises(UnknownRegionError, match=rf"no built-in Fargate prices for region '{region}'; "
                                                 r"known: ap-northeast-1, .*us-west-2$"):
        BuiltinPriceSource().rates(region, "x86_64", False)
    with pytest.raises(ValueError, match="known: "):
        estimate_hourly(1, 1, 2, region=region)


# --- billing arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, billed",
                         [(0, 60), (1, 60), (59.5, 60), (60, 60), (60.2, 61), (3600, 3600), (-5, 60)])
def test_billed_seconds_per_second_with_one_minute_minimum(seconds, billed):
    assert billed_seconds(seconds) == billed


def test_task_cost():
    rates = Rates(0.04048, 0.004445)
    # 4 vCPU / 8 GB for one hour.
    assert task_cost(3600, 4, 8, rates) == pytest.approx(4 * 0.04048 + 8 * 0.004445 + IPV4)
    # Ten seconds cost a minute.
    assert task_cost(10, 4, 8, rates) == pytest.approx((4 * 0.04048 + 8 * 0.004445 + IPV4) / 60)
    assert task_cost(10, 4, "8GB", rates) == task_cost(10, 4, 8, rates)


def test_estimate_hourly():
    hourly = estimate_hourly(50, 4, 8, arch="x86_64", spot=False, region="us-east-1")
    assert hourly == pytest.approx(50 * (4 * 0.04048 + 8 * 0.004445 + IPV4))
    spot = estimate_hourly(50, 4, "8GB", spot=True, region="us-east-1")
    assert spot < hourly * 0.5
    arm = estimate_hourly(50, 4, 8, arch="aarch64", region="us-east-1")
    assert arm == pytest.approx(50 * (4 * 0.03238 + 8 * 0.00356 + IPV4))
    assert estimate_hourly(0, 4, 8) == 0
    frankfurt = estimate_hourly(1, 1, 2, region="eu-central-1")
    assert frankfurt == pytest.approx(0.04656 + 2 * 0.00511 + IPV4)
    with pytest.raises(ValueError):
        estimate_hourly(-1, 4, 8)
    with pytest.raises(ValueError):
        estimate_hourly(2, 4, 0)


def test_estimate_uses_the_given_source():
    class Flat:
        def rates(self, region, arch="x86_64", spot=False):
            return Rates(1.0, 0.5, "flat")

    assert estimate_hourly(3, 2, 4, source=Flat()) == pytest.approx(3 * (2 * 1.0 + 4 * 0.5 + IPV4))


def test_describe_estimate():
    line = describe_estimate(50, 4, 8, spot=True, region="us-east-1", max_cost=5.0)
    hourly = estimate_hourly(50, 4, 8, spot=True, region="us-east-1")
    assert line.startswith("50 workers x 4 vCPU/8 GB on Fargate Spot (x86_64, us-east-1): about $")
    assert pricing.format_cost(hourly) in line
    assert "max_cost $5.00 lasts about" in line
    # Line by line, and where the prices come from, with their date.
    assert f"public IPv4 {pricing.format_cost(50 * IPV4)}" in line
    assert f"prices: built-in table of {PRICES_AS_OF}" in line


def test_the_report_itemizes_compute_and_public_ipv4():
    clock = FakeClock(0.0)
    meter = CostMeter("us-east-1", clock=clock)
    meter.task_started("a", 1, 2)
    meter.task_started("b", 1, 2, spot=True)
    clock.now = 600.0
    meter.task_stopped("a")
    clock.now = 1_800.0
    report = meter.report()
    items = dict(report.items)
    # By hand: a ran 600 s, b 1,800 s; on-demand and spot rates of us-east-1; IPv4 for both.
    compute = (600 * (0.04048 + 2 * 0.004445) + 1_800 * (0.01264355 + 2 * 0.00138835)) / 3600
    assert items["Fargate vCPU and memory"] == pytest.approx(compute, rel=1e-9)
    assert items["public IPv4"] == pytest.approx((600 + 1_800) * PUBLIC_IPV4_HOUR / 3600, rel=1e-9)
    assert report.cost == pytest.approx(sum(items.values()), rel=1e-12)
    assert "public IPv4 $0.0033" in report.text()


def test_format_helpers():
    assert pricing.format_cost(2.714) == "$2.71"
    assert pricing.format_cost(1234.5) == "$1,234.50"
    assert pricing.format_cost(0.00421) == "$0.0042"
    assert pricing.format_duration(45) == "45 s"
    assert pricing.format_duration(750) == "12 min 30 s"
    assert pricing.format_duration(7500) == "2 h 05 min"


# --- budget ------------------------------------------------------------------------------------


def test_would_exceed():
    assert would_exceed(None, 1e9) is False
    assert would_exceed(5.0, 4.99) is False
    assert would_exceed(5.0, 5.0) is False
    assert would_exceed(5.0, 5.01) is True
    assert would_exceed(0.0, 0.0001) is True


# --- the meter ---------------------------------------------------------------------------------


def test_meter_records_tasks_and_reports():
    clock = FakeClock(1_000.0)
    meter = CostMeter(region="us-east-1", clock=clock, max_cost=5.0)
    per_second = Rates(0.04048, 0.004445).per_second(4, 8)

    meter.task_started("t1", 4, 8)
    meter.task_started("t2", 4, "8GB", at=1_010.0)
    assert meter.running() == ["t1", "t2"]
    # Inside the first minute each task is charged its minute.
    clock.now = 1_020.0
    assert meter.cost_so_far() == pytest.approx(2 * 60 * per_second)

    clock.now = 1_000.0 + 600
    assert meter.task_stopped("t1") == pytest.approx(600 * per_second)
    assert meter.running() == ["t2"]
    # A second stop of the same task changes nothing.
    clock.now = 2_000.0
    assert meter.task_stopped("t1") == pytest.approx(600 * per_second)

    meter.record_tasks_run(999)
    meter.record_tasks_run()
    report = meter.report(now=1_000.0 + 1_200)
    assert report.nodes == 2
    assert report.running == 1
    assert report.tasks_run == 1000
    assert report.runtime_seconds == pytest.approx(1_200)
    assert report.node_seconds == pytest.approx(600 + 1_190)
    assert report.cost == pytest.approx((600 + 1_190) * per_second)
    text = report.text()
    assert text.startswith("us-east-1: ran 20 min 00 s; 2 Fargate tasks")
    assert "1,000 tasks run" in text and "of max_cost $5.00" in text and "1 still running" in text


def test_meter_charges_each_task_its_own_rates():
    clock = FakeClock(0.0)
    meter = CostMeter(region="us-east-1", clock=clock)
    meter.task_started("od", 1, 2, spot=False)
    meter.task_started("spot", 1, 2, spot=True)
    meter.task_started("arm", 1, 2, arch="arm64")
    clock.now = 3_600.0
    for task in ("od", "spot", "arm"):
        meter.task_stopped(task)
    table = PRICE_TABLE["us-east-1"]
    expected = sum(table[key].per_hour(1, 2) for key in [("x86_64", False), ("x86_64", True), ("arm64", False)])
    assert meter.cost_so_far() == pytest.approx(expected)
    assert meter.report().sources == (f"built-in table of {PRICES_AS_OF}",)


def test_meter_refuses_duplicate_and_unknown_tasks():
    meter = CostMeter(clock=FakeClock())
    meter.task_started("t", 1, 2)
    with pytest.raises(ValueError):
        meter.task_started("t", 1, 2)
    with pytest.raises(KeyError):
        meter.task_stopped("nope")


def test_budget_on_the_meter():
    clock = FakeClock(0.0)
    per_task_minute = Rates(0.04048, 0.004445).per_hour(16, 120) / 60
    meter = CostMeter(region="us-east-1", clock=clock, max_cost=per_task_minute * 3.5)
    assert meter.launch_cost(3, 16, 120) == pytest.approx(3 * per_task_minute)
    assert meter.can_launch(3, 16, 120)
    assert not meter.can_launch(4, 16, 120)
    for i in range(3):
        meter.task_started(f"t{i}", 16, 120)
    assert not meter.can_launch(1, 16, 120)
    assert meter.burn_rate() == pytest.approx(3 * per_task_minute * 60)
    # Already 3 minutes' worth charged; the cap is reached half a task-minute later, i.e. after
    # 10 seconds at three tasks' rate (a lower bound: the first minute is prepaid).
    assert meter.seconds_until(meter.max_cost) == pytest.approx(10.0)
    assert meter.seconds_until(0.01) == 0.0
    idle = CostMeter(clock=clock)
    assert idle.seconds_until(1.0) is None
    assert CostMeter(clock=clock).can_launch(10_000, 16, 120)  # no budget


def test_meter_start_time_and_clock_injection():
    clock = FakeClock(50.0)
    meter = CostMeter(clock=clock)
    clock.now = 170.0
    assert meter.report().runtime_seconds == pytest.approx(120.0)
    assert meter.report().cost == 0


# --- the Pricing API source --------------------------------------------------------------------


def _client():
    return boto3.session.Session(region_name="us-east-1").client("pricing")


def _product(usagetype: str, usd: str, region: str = "eu-central-1") -> str:
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute",
                "attributes": {"usagetype": usagetype, "regionCode": region, "servicecode": "AmazonECS"},
                "sku": usagetype,
            },
            "serviceCode": "AmazonECS",
            "terms": {
                "OnDemand": {
                    f"{usagetype}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{usagetype}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "hours",
                                "pricePerUnit": {"USD": usd},
                                "description": "test",
                            }
                        }
                    }
                }
            },
            "version": "20261101000000",
            "publicationDate": "2026-11-01T00:00:00Z",
        }
    )


def _expected(region: str, token: str | None = None) -> dict:
    params = {
        "ServiceCode": "AmazonECS",
        "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}],
        "FormatVersion": "aws_v1",
        "MaxResults": 100,
    }
    if token:
        params["NextToken"] = token
    return params


def test_pricing_api_source_reads_rates_over_pages_and_caches():
    client = _client()
    source = PricingApiPriceSource(client=client)
    with Stubber(client) as stub:
        stub.add_response(
            "get_products",
            {
                "FormatVersion": "aws_v1",
                "PriceList": [
                    _product("EUC1-Fargate-vCPU-Hours:perCPU", "0.0466000000"),
                    _product("EUC1-Fargate-GB-Hours", "0.0051200000"),
                    # Look-alikes that must not be taken for the Linux rates:
                    _product("EUC1-Fargate-Windows-vCPU-Hours:perCPU", "0.0900000000"),
                    _product("EUC1-Fargate-EphemeralStorage-GB-Hours", "0.0001220000"),
                    _product("EUC1-Fargate-ARM-vCPU-Hours:perCPU", "0.0372800000"),
                ],
                "NextToken": "page-2",
            },
            _expected("eu-central-1"),
        )
        stub.add_response(
            "get_products",
            {
                "FormatVersion": "aws_v1",
                "PriceList": [
                    _product("EUC1-Fargate-ARM-GB-Hours", "0.0040900000"),
                    _product("EUC1-SpotUsage-Fargate-vCPU-Hours:perCPU", "0.0150000000"),
                    _product("EUC1-SpotUsage-Fargate-GB-Hours", "0.0016000000"),
                ],
            },
            _expected("eu-central-1", "page-2"),
        )
        on_demand = source.rates("eu-central-1", "x86_64", False)
        arm = source.rates("eu-central-1", "arm64", False)
        spot = source.rates("eu-central-1", "x86_64", True)
        # Second lookups come from the cache: no third response was stubbed.
        again = source.rates("eu-central-1", "x86_64", False)
        stub.assert_no_pending_responses()
    assert (on_demand.vcpu_hour, on_demand.gb_hour) == (0.0466, 0.00512)
    assert on_demand.source.startswith("AWS Pricing API (2026-11-01, read 20")
    assert (arm.vcpu_hour, arm.gb_hour) == (0.03728, 0.00409)
    assert (spot.vcpu_hour, spot.gb_hour) == (0.015, 0.0016)
    assert again == on_demand
    # ARM spot wasn't in the answer: the built-in table fills in, and says so.
    arm_spot = source.rates("eu-central-1", "arm64", True)
    assert arm_spot.vcpu_hour == PRICE_TABLE["eu-central-1"][("arm64", True)].vcpu_hour
    assert "not in the Pricing API's answer" in arm_spot.source
    assert source.last_error is None


def test_pricing_api_failure_falls_back_to_the_table():
    client = _client()
    source = PricingApiPriceSource(client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_products", "AccessDeniedException", "not allowed", 400)
        rates = source.rates("us-west-2", "x86_64", False)
    assert (rates.vcpu_hour, rates.gb_hour) == (0.04048, 0.004445)
    assert "Pricing API failed" in rates.source and "AccessDeniedException" in rates.source
    assert source.last_error is not None


def test_meter_with_the_pricing_api_source():
    client = _client()
    source = PricingApiPriceSource(client=client)
    clock = FakeClock(0.0)
    meter = CostMeter(region="eu-central-1", source=source, clock=clock)
    with Stubber(client) as stub:
        stub.add_response(
            "get_products",
            {
                "FormatVersion": "aws_v1",
                "PriceList": [
                    _product("EUC1-Fargate-vCPU-Hours:perCPU", "0.1"),
                    _product("EUC1-Fargate-GB-Hours", "0.01"),
                ],
            },
            _expected("eu-central-1"),
        )
        meter.task_started("t", 2, 4)
    clock.now = 7_200.0
    assert meter.cost_so_far() == pytest.approx(2 * (2 * 0.1 + 4 * 0.01 + IPV4))


def _answer(region_prefix: str, vcpu: str, gb: str, region: str) -> dict:
    return {"FormatVersion": "aws_v1", "PriceList": [
        _product(f"{region_prefix}-Fargate-vCPU-Hours:perCPU", vcpu, region),
        _product(f"{region_prefix}-Fargate-GB-Hours", gb, region)]}


def test_pricing_api_answers_are_cached_on_disk_with_their_date(tmp_path):
    import datetime as dt

    today = [dt.date(2026, 12, 6)]
    client = _client()
    with Stubber(client) as stub:
        stub.add_response("get_products", _answer("EUC1", "0.05", "0.006", "eu-central-1"), _expected("eu-central-1"))
        first = PricingApiPriceSource(client=client, cache_dir=tmp_path, today=lambda: today[0])
        rates = first.rates("eu-central-1")
        stub.assert_no_pending_responses()
    assert (rates.vcpu_hour, rates.gb_hour) == (0.05, 0.006)
    assert rates.source == "AWS Pricing API (2026-11-01, read 2026-12-06)"
    saved = json.loads((tmp_path / "eu-central-1.json").read_text())
    assert saved["fetched"] == "2026-12-06"
    # Another process (a new source) within the week reads the file: no query (none is stubbed).
    client2 = _client()
    with Stubber(client2):
        again = PricingApiPriceSource(client=client2, cache_dir=tmp_path, today=lambda: today[0]).rates("eu-central-1")
    assert again == rates
    # A week later the answer is asked for again.
    today[0] = dt.date(2026, 12, 13)
    client3 = _client()
    with Stubber(client3) as stub:
        stub.add_response("get_products", _answer("EUC1", "0.06", "0.007", "eu-central-1"), _expected("eu-central-1"))
        fresh = PricingApiPriceSource(client=client3, cache_dir=tmp_path, today=lambda: today[0]).rates("eu-central-1")
        stub.assert_no_pending_responses()
    assert (fresh.vcpu_hour, fresh.gb_hour) == (0.06, 0.007) and "read 2026-12-13" in fresh.source


def test_a_region_the_api_prices_is_known_and_one_nobody_prices_is_an_error():
    client = _client()
    source = PricingApiPriceSource(client=client)
    with Stubber(client) as stub:
        stub.add_response("get_products", _answer("APN2", "0.04656", "0.00511", "ap-northeast-2"),
                          _expected("ap-northeast-2"))
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": []}, _expected("mars-1"))
        seoul = source.rates("ap-northeast-2")
        assert seoul.vcpu_hour == 0.04656 and seoul.source.startswith("AWS Pricing API")
        with pytest.raises(UnknownRegionError, match=r"'mars-1' \(and the AWS Pricing API didn't price it: "
                                                     r"not in the Pricing API's answer\); known: "):
            source.rates("mars-1")
    # The estimate names the API as its source.
    line = describe_estimate(1, 1, 2, region="ap-northeast-2", source=source)
    assert "prices: AWS Pricing API (2026-11-01, read " in line


def test_a_failing_api_is_asked_once_then_the_table_answers_and_unknown_regions_are_errors():
    client = _client()
    source = PricingApiPriceSource(client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_products", "ThrottlingException", "slow down", 400)
        first = source.rates("us-east-1")
        second = source.rates("eu-west-1", "arm64", True)  # no second response stubbed: not asked again
        with pytest.raises(UnknownRegionError, match="Pricing API failed"):
            source.rates("ap-northeast-2")
    assert first.vcpu_hour == PRICE_TABLE["us-east-1"][("x86_64", False)].vcpu_hour
    assert second == Rates(PRICE_TABLE["eu-west-1"][("arm64", True)].vcpu_hour,
                           PRICE_TABLE["eu-west-1"][("arm64", True)].gb_hour, second.source)
    assert f"built-in table of {PRICES_AS_OF}" in second.source and "ThrottlingException" in second.source


def test_price_source_uses_the_api_only_with_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    chosen = pricing.price_source(boto3.session.Session(region_name="us-east-1"))
    assert isinstance(chosen, PricingApiPriceSource)
    assert str(chosen.cache_dir) == str(tmp_path / "home" / "prices")
    monkeypatch.setenv("STARBURST_PRICES", "builtin")
    assert isinstance(pricing.price_source(), BuiltinPriceSource)
    monkeypatch.delenv("STARBURST_PRICES")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(pricing.price_source(boto3.session.Session(region_name="us-east-1")), BuiltinPriceSource)


# --- S3, data transfer out, CodeBuild ------------------------------------------------------------


def test_the_meter_bills_s3_transfer_out_and_codebuild_line_by_line():
    clock = FakeClock(0.0)
    meter = CostMeter(region="us-east-1", clock=clock)
    meter.task_started("t", 1, 2)
    build = meter.record_build(61.0, "x86_64")  # two started minutes of general1.medium
    assert build == pytest.approx(2 * 0.01)
    meter.record_usage(put_requests=2_000, get_requests=10_000, delete_requests=50, bytes_uploaded=2 * 10**9,
                       transfer_out_bytes=0, at=0.0)
    clock.now = 1800.0
    meter.record_usage(put_requests=3_000, get_requests=20_000, delete_requests=70, bytes_uploaded=4 * 10**9,
                       transfer_out_bytes=5 * 10**9, at=1800.0)
    clock.now = 3600.0
    report = meter.report()
    items = dict(report.items)
    assert items["S3 requests"] == pytest.approx(3 * 0.005 + 20 * 0.0004)
    # 2 GB for the first half hour, 4 GB for the second: 3 GB-hours at $0.023 per GB-month of 730 hours.
    assert report.usage["s3_byte_hours"] == pytest.approx(3e9)
    assert items["S3 storage"] == pytest.approx(3 * 0.023 / 730)
    assert items["data transfer out"] == pytest.approx(5 * 0.09)
    assert items["CodeBuild"] == pytest.approx(0.02)
    assert items["Fargate vCPU and memory"] == pytest.approx(0.04048 + 2 * 0.004445)
    assert items["public IPv4"] == pytest.approx(IPV4)
    assert report.cost == pytest.approx(sum(items.values()))
    assert meter.cost_so_far() == pytest.approx(report.cost)
    assert report.usage["s3_delete_requests"] == 70 and report.usage["codebuild_minutes"] == 2
    assert report.usage["billed_task_seconds"] == [3600]
    text = report.text()
    assert "S3 requests $0.0230" in text and "data transfer out $0.45" in text and "CodeBuild $0.0200" in text


def test_s3_use_counts_against_max_cost():
    clock = FakeClock(0.0)
    meter = CostMeter(region="us-east-1", clock=clock, max_cost=0.01)
    assert meter.can_launch(1, 1, 2)
    meter.record_usage(put_requests=2_000, get_requests=0, delete_requests=0, bytes_uploaded=0, transfer_out_bytes=0)
    assert not meter.can_launch(1, 1, 2)  # $0.01 of PUTs already spent
