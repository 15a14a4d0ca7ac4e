"""Fargate vCPU quotas: wave planning, suggested values, the remembered request, the fake, and
the boto3 implementation driven with botocore's Stubber (moto has no Fargate quotas)."""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
from aws_fixtures import fake_credentials
from botocore.stub import ANY, Stubber

from starburst.aws import quotas
from starburst.aws.quotas import (
    FakeQuotaSource,
    QuotaRequest,
    QuotaRequestStore,
    ServiceQuotasSource,
    plan_waves,
    quota_status,
    suggest_quota,
)

ON_DEMAND, SPOT = "L-3032A538", "L-36FBB829"
NOW = dt.datetime(2026, 11, 30, 17, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def dummy_aws(monkeypatch, tmp_path):
    """Fake credentials and region, no user AWS config, and a private STARBURST_HOME."""
    fake_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))


# --- planning ----------------------------------------------------------------------------------


def test_plan_waves_short_quota():
    plan = plan_waves(50, 4, limit=48, in_use=0)
    assert plan.workers == 12 and not plan.fits
    assert plan.message == (
        "quota allows 12 of 50 workers (4 vCPU each; limit 48 vCPU, 0 in use): "
        "the work runs in waves through 12 workers"
    )
    assert plan.needed_vcpu == 200
    assert str(plan) == plan.message


def test_plan_waves_counts_usage_and_fractional_cpus():
    plan = plan_waves(50, 4, limit=48, in_use=10)
    assert plan.workers == 9  # 38 free vCPU / 4
    assert "limit 48 vCPU, 10 in use" in plan.message
    assert plan_waves(10, 0.25, limit=1, in_use=0.5).workers == 2
    assert plan_waves(3, 0.5, limit=6, in_use=0, spot=True).message == (
        "spot quota allows all 3 workers (0.5 vCPU each; limit 6 vCPU, 0 in use)"
    )


def test_plan_waves_everything_fits():
    plan = plan_waves(10, 4, limit=256, in_use=100)
    assert plan.fits and plan.workers == 10
    assert plan.message == "quota allows all 10 workers (4 vCPU each; limit 256 vCPU, 100 in use)"


def test_plan_waves_nothing_fits():
    plan = plan_waves(5, 16, limit=6, in_use=0)
    assert plan.workers == 0
    assert "no worker can start" in plan.message
    assert "to run all at once: 128 vCPU" in plan.message
    # Usage above the limit (the quota was lowered, or other tasks) is not negative room.
    assert plan_waves(5, 1, limit=6, in_use=9).workers == 0


def test_plan_waves_refuses_nonsense():
    with pytest.raises(ValueError):
        plan_waves(-1, 4, 48)
    with pytest.raises(ValueError):
        plan_waves(10, 0, 48)


@pytest.mark.parametrize(
    "needed, suggested",
    [(0, 32), (6, 32), (32, 32), (33, 64), (64, 64), (65, 128), (200, 256), (500, 512), (513, 1000),
     (1000, 1000), (1001, 2000), (2001, 5000), (5001, 10000), (12000, 20000), (20001, 50000), (60000, 100000)],
)
def test_suggest_quota_rounds_up_to_a_sensible_value(needed, suggested):
    assert suggest_quota(needed) == suggested


def test_suggest_quota_refuses_negative():
    with pytest.raises(ValueError):
        suggest_quota(-1)


# --- the state file ----------------------------------------------------------------------------


def test_store_defaults_to_starburst_home_and_round_trips(tmp_path):
    store = QuotaRequestStore()
    assert store.path == tmp_path / "home" / "quota-requests.json"
    assert store.get("us-east-1", True) is None
    request = QuotaRequest("r-1", True, 256.0, "PENDING", "us-east-1", "case-9", "2026-11-30 17:00 UTC")
    store.put(request)
    store.put(QuotaRequest("r-2", False, 64.0, "APPROVED", "us-east-1"))
    again = QuotaRequestStore()
    assert again.get("us-east-1", True) == request
    assert again.get("us-east-1", False).status == "APPROVED"
    assert again.get("eu-west-1", True) is None
    data = json.loads(store.path.read_text())
    assert set(data["requests"]) == {"us-east-1/spot", "us-east-1/on-demand"}
    again.forget("us-east-1", True)
    assert QuotaRequestStore().get("us-east-1", True) is None


def test_store_survives_a_broken_file(tmp_path):
    path = tmp_path / "q.json"
    path.write_text("{not json")
    store = QuotaRequestStore(path)
    assert store.get("us-east-1", False) is None
    store.put(QuotaRequest("r", False, 64.0, "PENDING", "us-east-1"))
    assert store.get("us-east-1", False).id == "r"


def test_request_text():
    request = QuotaRequest("r", True, 256.0, "CASE_OPENED", "us-east-1", case_id="123")
    assert request.is_open
    assert request.text() == "request for 256 spot vCPU: CASE_OPENED (case 123)"
    assert not QuotaRequest("r", True, 256.0, "APPROVED").is_open


# --- the fake ----------------------------------------------------------------------------------


def test_fake_quota_source_lifecycle(tmp_path):
    store = QuotaRequestStore(tmp_path / "q.json")
    fake = FakeQuotaSource(on_demand_limit=48, spot_limit=6, on_demand_usage=8, store=store)
    assert fake.fargate_vcpu_limit(False) == 48 and fake.fargate_vcpu_limit(True) == 6
    assert fake.current_vcpu_usage(False) == 8 and fake.current_vcpu_usage(True) == 0
    assert fake.pending_request(True) is None

    request = fake.request_increase(True, 256)
    assert request.status == "PENDING" and request.desired == 256
    assert fake.pending_request(True) is request
    assert fake.pending_request(False) is None
    # Asking again for no more returns the open request instead of filing another.
    assert fake.request_increase(True, 128) is request
    assert store.get("us-east-1", True).id == request.id

    fake.resolve(True, approve=True)
    assert fake.fargate_vcpu_limit(True) == 256
    assert fake.pending_request(True) is None
    assert store.get("us-east-1", True).status == "APPROVED"

    fake.request_increase(False, 64)
    fake.resolve(False, approve=False)
    assert fake.fargate_vcpu_limit(False) == 48
    with pytest.raises(LookupError):
        fake.resolve(False)
    with pytest.raises(ValueError):
        fake.request_increase(False, 10)  # below the quota


def test_quota_status_text():
    fake = FakeQuotaSource(on_demand_limit=48, on_demand_usage=12)
    fake.request_increase(False, 256)
    status = quota_status(fake, False)
    assert status.text() == "on-demand: 48 vCPU quota, 12 in use; request for 256 on-demand vCPU: PENDING, filed " + (
        fake.requests[0].created
    )
    assert quota_status(fake, True).text() == "spot: 6 vCPU quota, 0 in use"


# --- the boto3 implementation ------------------------------------------------------------------


def _clients():
    session = boto3.session.Session(region_name="us-east-1")
    return session.client("service-quotas"), session.client("cloudwatch")


def _quota(code: str, value: float, dims: dict | None = None) -> dict:
    quota = {
        "ServiceCode": "fargate",
        "ServiceName": "AWS Fargate",
        "QuotaCode": code,
        "QuotaName": "Fargate On-Demand vCPU resource count",
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }
    if dims:
        quota["UsageMetric"] = {
            "MetricNamespace": "AWS/Usage",
            "MetricName": "ResourceCount",
            "MetricDimensions": dims,
            "MetricStatisticRecommendation": "Maximum",
        }
    return {"Quota": quota}


def _requested(request_id: str, code: str, desired: float, status: str, created: dt.datetime = NOW) -> dict:
    return {
        "Id": request_id,
        "CaseId": f"case-{request_id}",
        "ServiceCode": "fargate",
        "QuotaCode": code,
        "DesiredValue": desired,
        "Status": status,
        "Created": created,
    }


def _source(tmp_path):
    sq, cw = _clients()
    store = QuotaRequestStore(tmp_path / "q.json")
    source = ServiceQuotasSource(client=sq, cloudwatch=cw, store=store, clock=lambda: NOW)
    return source, sq, cw, store


def test_limit_reads_the_applied_quota_then_the_default(tmp_path):
    source, sq, _, _ = _source(tmp_path)
    with Stubber(sq) as stub:
        stub.add_response("get_service_quota", _quota(ON_DEMAND, 48.0),
                          {"ServiceCode": "fargate", "QuotaCode": ON_DEMAND})
        stub.add_client_error(
            "get_service_quota", "NoSuchResourceException", "never changed", 400,
            expected_params={"ServiceCode": "fargate", "QuotaCode": SPOT},
        )
        stub.add_response(
            "get_aws_default_service_quota", _quota(SPOT, 6.0), {"ServiceCode": "fargate", "QuotaCode": SPOT}
        )
        assert source.fargate_vcpu_limit(False) == 48.0
        assert source.fargate_vcpu_limit(True) == 6.0
        stub.assert_no_pending_responses()


def test_limit_other_errors_propagate(tmp_path):
    from botocore.exceptions import ClientError

    source, sq, _, _ = _source(tmp_path)
    with Stubber(sq) as stub:
        stub.add_client_error("get_service_quota", "AccessDeniedException", "no", 400)
        with pytest.raises(ClientError, match="AccessDenied"):
            source.fargate_vcpu_limit(False)


def test_usage_from_cloudwatch(tmp_path):
    source, sq, cw, _ = _source(tmp_path)
    default_dims = [
        {"Name": "Class", "Value": "Standard/OnDemand"},
        {"Name": "Resource", "Value": "vCPU"},
        {"Name": "Service", "Value": "Fargate"},
        {"Name": "Type", "Value": "Resource"},
    ]
    with Stubber(cw) as stub:
        stub.add_response(
            "get_metric_statistics",
            {
                "Label": "ResourceCount",
                "Datapoints": [
                    {"Timestamp": NOW - dt.timedelta(minutes=3), "Maximum": 40.0, "Unit": "None"},
                    {"Timestamp": NOW - dt.timedelta(minutes=1), "Maximum": 12.0, "Unit": "None"},
                    {"Timestamp": NOW - dt.timedelta(minutes=2), "Maximum": 30.0, "Unit": "None"},
                ],
            },
            {
                "Namespace": "AWS/Usage",
                "MetricName": "ResourceCount",
                "Dimensions": default_dims,
                "StartTime": NOW - dt.timedelta(minutes=10),
                "EndTime": NOW,
                "Period": 60,
                "Statistics": ["Maximum"],
            },
        )
        stub.add_response("get_metric_statistics", {"Label": "ResourceCount", "Datapoints": []})
        assert source.current_vcpu_usage(False) == 12.0  # the latest point, not the largest
        assert source.current_vcpu_usage(True) == 0.0
        stub.assert_no_pending_responses()


def test_usage_uses_the_metric_the_quota_names(tmp_path):
    source, sq, cw, _ = _source(tmp_path)
    dims = {"Service": "Fargate", "Type": "Resource", "Resource": "vCPU", "Class": "Standard/Spot"}
    with Stubber(sq) as sq_stub, Stubber(cw) as cw_stub:
        sq_stub.add_response("get_service_quota", _quota(SPOT, 100.0, dims))
        cw_stub.add_response(
            "get_metric_statistics",
            {"Datapoints": [{"Timestamp": NOW, "Maximum": 7.0}]},
            {
                "Namespace": "AWS/Usage",
                "MetricName": "ResourceCount",
                "Dimensions": [{"Name": k, "Value": dims[k]} for k in sorted(dims)],
                "StartTime": ANY,
                "EndTime": ANY,
                "Period": 60,
                "Statistics": ["Maximum"],
            },
        )
        assert source.fargate_vcpu_limit(True) == 100.0
        assert source.current_vcpu_usage(True) == 7.0


def test_request_increase_files_and_remembers(tmp_path):
    source, sq, _, store = _source(tmp_path)
    with Stubber(sq) as stub:
        # No remembered request: the history is checked for an open one first.
        stub.add_response(
            "list_requested_service_quota_change_history_by_quota",
            {"RequestedQuotas": [_requested("old", SPOT, 32.0, "APPROVED")]},
            {"ServiceCode": "fargate", "QuotaCode": SPOT},
        )
        stub.add_response(
            "request_service_quota_increase",
            {"RequestedQuota": _requested("r-1", SPOT, 256.0, "PENDING")},
            {"ServiceCode": "fargate", "QuotaCode": SPOT, "DesiredValue": 256.0},
        )
        request = source.request_increase(True, 256)
        stub.assert_no_pending_responses()
    assert (request.id, request.desired, request.status, request.region) == ("r-1", 256.0, "PENDING", "us-east-1")
    assert request.created == "2026-11-30 17:00 UTC"
    assert store.get("us-east-1", True) == request

    # Later (another process): the remembered request is refreshed from AWS.
    later = ServiceQuotasSource(client=sq, store=QuotaRequestStore(store.path))
    with Stubber(sq) as stub:
        stub.add_response(
            "get_requested_service_quota_change",
            {"RequestedQuota": _requested("r-1", SPOT, 256.0, "CASE_OPENED")},
            {"RequestId": "r-1"},
        )
        pending = later.pending_request(True)
    assert pending.status == "CASE_OPENED" and pending.case_id == "case-r-1"
    assert store.get("us-east-1", True).status == "CASE_OPENED"

    # An open request for enough is returned instead of filing another.
    with Stubber(sq) as stub:
        stub.add_response(
            "get_requested_service_quota_change",
            {"RequestedQuota": _requested("r-1", SPOT, 256.0, "CASE_OPENED")},
            {"RequestId": "r-1"},
        )
        assert later.request_increase(True, 200).id == "r-1"
        stub.assert_no_pending_responses()


def test_closed_request_is_kept_with_its_outcome(tmp_path):
    source, sq, _, store = _source(tmp_path)
    store.put(QuotaRequest("r-1", False, 128.0, "PENDING", "us-east-1"))
    with Stubber(sq) as stub:
        stub.add_response(
            "get_requested_service_quota_change",
            {"RequestedQuota": _requested("r-1", ON_DEMAND, 128.0, "APPROVED")},
            {"RequestId": "r-1"},
        )
        stub.add_response(
            "list_requested_service_quota_change_history_by_quota",
            {"RequestedQuotas": [_requested("r-1", ON_DEMAND, 128.0, "APPROVED")]},
        )
        assert source.pending_request(False) is None
    assert source.last_request(False).status == "APPROVED"


def test_open_request_filed_elsewhere_is_found_over_pages(tmp_path):
    source, sq, _, store = _source(tmp_path)
    with Stubber(sq) as stub:
        stub.add_response(
            "list_requested_service_quota_change_history_by_quota",
            {"RequestedQuotas": [_requested("a", ON_DEMAND, 64.0, "DENIED")], "NextToken": "t2"},
            {"ServiceCode": "fargate", "QuotaCode": ON_DEMAND},
        )
        stub.add_response(
            "list_requested_service_quota_change_history_by_quota",
            {
                "RequestedQuotas": [
                    _requested("b", ON_DEMAND, 100.0, "PENDING", NOW - dt.timedelta(days=1)),
                    _requested("c", ON_DEMAND, 500.0, "CASE_OPENED", NOW),
                ]
            },
            {"ServiceCode": "fargate", "QuotaCode": ON_DEMAND, "NextToken": "t2"},
        )
        found = source.pending_request(False)
        stub.assert_no_pending_responses()
    assert found.id == "c" and found.desired == 500.0
    assert store.get("us-east-1", False).id == "c"


def test_already_exists_returns_the_open_request(tmp_path):
    source, sq, _, _ = _source(tmp_path)
    with Stubber(sq) as stub:
        stub.add_response("list_requested_service_quota_change_history_by_quota", {"RequestedQuotas": []})
        stub.add_client_error("request_service_quota_increase", "ResourceAlreadyExistsException", "open already", 400)
        stub.add_response(
            "list_requested_service_quota_change_history_by_quota",
            {"RequestedQuotas": [_requested("x", ON_DEMAND, 64.0, "PENDING")]},
        )
        # AWS says one is open (it appeared between the two calls): that one is returned.
        assert source.request_increase(False, 1000).id == "x"
        stub.assert_no_pending_responses()


def test_quota_status_with_the_boto3_source(tmp_path):
    source, sq, cw, _ = _source(tmp_path)
    with Stubber(sq) as sq_stub, Stubber(cw) as cw_stub:
        sq_stub.add_response("get_service_quota", _quota(ON_DEMAND, 48.0))
        cw_stub.add_response("get_metric_statistics", {"Datapoints": [{"Timestamp": NOW, "Maximum": 12.0}]})
        sq_stub.add_response("list_requested_service_quota_change_history_by_quota", {"RequestedQuotas": []})
        status = quota_status(source, False)
    assert status.text() == "on-demand: 48 vCPU quota, 12 in use"


def test_quota_codes():
    assert quotas.QUOTA_CODES == {False: "L-3032A538", True: "L-36FBB829"}
    assert quotas.SERVICE_CODE == "fargate"
