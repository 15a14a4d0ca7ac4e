"""The serialized layout (serialization.py), in process: plain values take the standard pickler,
everything else cloudpickle, and both read back the same way."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest

from starburst.serialization import deserialize, serialize

PLAIN = [0, -(1 << 70), 1.5, True, None, "text", b"\x00bytes", (), ((), {}), ((1, "a"), {"k": 2.0, "n": None}),
         list(range(16))]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_pickle_as_cloudpickle_would_and_read_back(value, monkeypatch):
    expected = cloudpickle.dumps(value, protocol=5)

    def no_cloudpickle(*args, **kwargs):
        raise AssertionError("a plain value went through cloudpickle (its per-call setup)")

    monkeypatch.setattr(cloudpickle, "dumps", no_cloudpickle)
    ser = serialize(value)
    assert ser.pickled == expected
    assert ser.buffers == [] and ser.contained == []
    assert deserialize(ser.to_bytes()) == value


class Point:  # a class of this test module: by value or by reference, only cloudpickle knows
    def __init__(self, x: int) -> None:
        self.x = x


@pytest.mark.parametrize("value", [list(range(17)), {1: 2}, [[[1]]], ((1, "a"), {"k": [2.0]}), {"p": Point(3)},
                                   lambda: 4],
                         ids=["long list", "int keys", "deep", "deep args", "object inside", "lambda"])
def test_other_values_go_through_cloudpickle(value):
    ser = serialize(value)
    assert ser.pickled == cloudpickle.dumps(value, protocol=5)
    back = deserialize(ser.to_bytes())
    if callable(value):
        assert back() == 4
    elif isinstance(value, dict) and "p" in value:
        assert back["p"].x == 3
    else:
        assert back == value


def test_arrays_travel_out_of_band_and_aligned():
    arr = np.arange(1000, dtype=np.float64)
    ser = serialize((arr,))
    assert len(ser.buffers) == 1
    data = ser.to_bytes()
    (back,) = deserialize(data)
    assert np.array_equal(back, arr)
    assert back.ctypes.data % 64 == np.frombuffer(data, np.uint8).ctypes.data % 64
