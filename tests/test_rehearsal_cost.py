"""The Fargate rehearsal's bill: every metered line checked by hand against the run's own record,
and the estimate printed before launch against the metered cost of a steady run."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest


import starburst

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_metered_cost_matches_a_hand_computation_and_the_estimate(rehearsal, agent, capsys):
    from starburst.aws.pricing import PRICE_TABLE, PUBLIC_IPV4_HOUR, USAGE_RATES
    from starburst.aws.provider import read_report
    from starburst.driver import process

    MiB = 1 << 20
    began = time.time()
    starburst.init(cluster="fargate", workers=1, lease=30, cpu=1, memory="2GB")
    cluster_id = process.find_head().cluster_id
    estimate_line = capsys.readouterr().err
    hourly = float(re.search(r"about \$([0-9.]+)/hour", estimate_line).group(1))
    try:
        data = starburst.put(np.ones(2 * MiB, dtype=np.uint8))  # to S3: the nodes read it from there

        @starburst.remote
        def step(arr, i):
            time.sleep(0.5)
            return int(arr[i]) + i

        @starburst.remote
        def result_array():
            return np.full(MiB, 7, dtype=np.uint8)  # over the inline threshold (1 MiB): via S3 to the driver

        # A steady run: the one worker busy for about a minute.
        deadline = time.monotonic() + float(os.environ.get("STEADY_S", 65))
        done = 0
        while time.monotonic() < deadline:
            assert starburst.get([step.remote(data, i) for i in range(10)], timeout=60) == [1 + i for i in range(10)]
            done += 10
        downloaded = starburst.get(result_array.remote(), timeout=60)
        assert downloaded.nbytes == MiB and int(downloaded[0]) == 7
    finally:
        starburst.shutdown()
    ended = time.time()
    assert agent.wait_all_exited(timeout=30)
    report = read_report(cluster_id)
    assert report is not None
    bill = report.bill
    usage = bill.usage
    items = dict(bill.items)

    # The run's own record: one task, billed about as long as the agent saw its node run.
    (record,) = agent.nodes.values()
    seen = record.term_sent_at - record.started_at
    (billed,) = usage["billed_task_seconds"]
    assert abs(billed - max(60.0, seen)) < 10, (billed, seen)  # one-minute minimum
    # Requests: the driver's put of the array and the node's of the result, the head's of the TLS
    # bundle; the node's get of the array and of the bundle, the driver's of the result. Bytes out:
    # the result the driver downloaded and the messages the head received (small).
    assert usage["s3_put_requests"] >= 3 and usage["s3_get_requests"] >= 3, usage
    assert MiB < usage["transfer_out_bytes"] < MiB + MiB // 2, usage
    assert usage["s3_byte_hours"] >= 2 * MiB * 60 / 3600

    # Line by line, by hand, from the record and the published rates.
    fargate = PRICE_TABLE["us-east-1"][("x86_64", False)]
    s3 = USAGE_RATES["us-east-1"]
    hand = {
        "Fargate vCPU and memory": billed / 3600 * (1 * fargate.vcpu_hour + 2 * fargate.gb_hour),
        "public IPv4": billed / 3600 * PUBLIC_IPV4_HOUR,
        "S3 requests": usage["s3_put_requests"] * s3.s3_put_per_1000 / 1000
                       + usage["s3_get_requests"] * s3.s3_get_per_1000 / 1000,
        "S3 storage": usage["s3_byte_hours"] / 1e9 * s3.s3_gb_month / 730,
        "data transfer out": usage["transfer_out_bytes"] / 1e9 * s3.transfer_out_gb,
        "CodeBuild": 0.0,  # the image was found in ECR: nothing built
    }
    assert set(items) == set(hand)
    for name, usd in hand.items():
        assert items[name] == pytest.approx(usd, rel=0.01, abs=1e-12), name
    assert bill.cost == pytest.approx(sum(hand.values()), rel=0.01)
    assert items["S3 requests"] > 0 and items["data transfer out"] > 0 and items["S3 storage"] > 0

    # The estimate before launch (its $/hour over the run's length) within 20% of the meter.
    estimate = hourly * (ended - began) / 3600
    assert abs(estimate - bill.cost) <= 0.2 * bill.cost, (estimate, bill.cost, bill.items)
    err = capsys.readouterr().err
    assert "S3 requests $" in err and "data transfer out $" in err, err
