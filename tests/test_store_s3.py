"""The S3 object store against a real S3-compatible server (SeaweedFS, started by s3_fixtures)."""

from __future__ import annotations

import collections
import os
import re
import threading
import uuid

import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from starburst.serialization import deserialize, serialize
from starburst.store.s3 import MiB, S3Store, parse_s3_url

PART = 5 * MiB  # the smallest part S3 allows, so "large" stays small for the tests


class Calls:
    """Counts the API calls (and HTTP attempts) a client makes, via botocore event hooks."""

    def __init__(self, client) -> None:
        self.calls = collections.Counter()
        self.attempts = collections.Counter()
        self.params = collections.defaultdict(list)
        self.threads = collections.defaultdict(set)
        self.headers = collections.defaultdict(list)
        self.inflight = collections.Counter()
        self.max_inflight = collections.Counter()
        self._lock = threading.Lock()
        events = client.meta.events
        events.register("provide-client-params.s3.*", self._call)
        events.register("after-call.s3.*", self._done)
        events.register("after-call-error.s3.*", self._done)
        events.register("before-send.s3.*", self._send)

    def _call(self, params, model, **kwargs):
        with self._lock:
            self.calls[model.name] += 1
            self.params[model.name].append({k: v for k, v in params.items() if k != "Body"})
            self.threads[model.name].add(threading.get_ident())
            self.inflight[model.name] += 1
            self.max_inflight[model.name] = max(self.max_inflight[model.name], self.inflight[model.name])

    def _done(self, event_name, **kwargs):
        with self._lock:
            self.inflight[event_name.rsplit(".", 1)[1]] -= 1

    def _send(self, request, event_name, **kwargs):
        op = event_name.rsplit(".", 1)[1]
        with self._lock:
            self.attempts[op] += 1
            self.headers[op].append({k.lower(): v for k, v in request.headers.items()})


@pytest.fixture(scope="module")
def session(s3_server):
    return s3_server.session()  # one session: loading the service model once saves time per test


@pytest.fixture
def make_store(s3_server, session):
    """Stores on a fresh prefix per test; extra stores on the same prefix act as other nodes."""
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    stores = []

    def make(**kwargs):
        kwargs.setdefault("part_size", PART)
        store = S3Store(s3_server.url(prefix), session=session, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _list(store) -> list[str]:
    r = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return sorted(o["Key"] for o in r.get("Contents", []))


def test_small_round_trip_is_one_put_with_a_checksum(make_store):
    store = make_store()
    calls = Calls(store.client)
    value = {"a": 1, "b": b"x" * 1000}
    ser = serialize(value)
    store.put("small", ser)
    assert calls.calls["PutObject"] == 1
    assert calls.calls["CreateMultipartUpload"] == 0
    assert calls.params["PutObject"][0]["ChecksumAlgorithm"] == "CRC32"  # asked for by the store
    assert "x-amz-checksum-crc32" in calls.headers["PutObject"][0] or any(
        "crc32" in str(v).lower() for v in calls.headers["PutObject"][0].values()
    )
    # the server kept the checksum it verified
    head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/small", ChecksumMode="ENABLED")
    assert head["ContentLength"] == ser.size
    assert head.get("ChecksumCRC32")
    other = make_store()  # another node: nothing cached
    view = other.get("small")
    assert isinstance(view, memoryview) and view.readonly
    assert bytes(view) == ser.to_bytes()
    assert deserialize(view) == value


def test_large_numpy_round_trip_uses_multipart_and_parallel_ranged_gets(make_store):
    array = np.random.default_rng(0).integers(0, 2**62, size=64 * MiB // 8, dtype=np.int64)
    ser = serialize(array)
    nparts = -(-ser.size // PART)
    assert nparts == 13

    writer = make_store(max_concurrency=4)
    wcalls = Calls(writer.client)
    writer.put("big", ser)
    assert wcalls.calls["CreateMultipartUpload"] == 1
    assert wcalls.calls["UploadPart"] == nparts
    assert wcalls.calls["CompleteMultipartUpload"] == 1
    assert wcalls.calls["PutObject"] == 0
    assert sorted(p["PartNumber"] for p in wcalls.params["UploadPart"]) == list(range(1, nparts + 1))
    assert wcalls.max_inflight["UploadPart"] > 1  # parts really went up in parallel
    assert all(p.get("ChecksumAlgorithm") == "CRC32" for p in wcalls.params["UploadPart"])
    head = writer.client.head_object(Bucket=writer.bucket, Key=f"{writer.prefix}/big")
    assert head["ContentLength"] == ser.size
    assert head["ETag"].strip('"').endswith(f"-{nparts}")  # the server assembled nparts parts

    reader = make_store(max_concurrency=4)
    rcalls = Calls(reader.client)
    view = reader.get("big")
    assert rcalls.calls["GetObject"] == nparts
    ranges = sorted(
        tuple(map(int, p["Range"][len("bytes=") :].split("-"))) for p in rcalls.params["GetObject"]
    )
    assert ranges[0][0] == 0 and ranges[-1][1] == ser.size - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
    assert rcalls.max_inflight["GetObject"] > 1  # ranges really came down in parallel
    assert view.readonly and view.nbytes == ser.size
    back = deserialize(view)
    assert np.array_equal(back, array)
    assert not back.flags.writeable


def test_cache_hit_avoids_a_second_download(make_store):
    store = make_store()
    ser = serialize(np.arange(3 * MiB, dtype=np.uint8))  # 3 MiB: fits in one ranged GET
    store.put("k", ser)
    calls = Calls(store.client)
    first = store.get("k")
    assert calls.calls["GetObject"] == 1
    second = store.get("k")
    assert calls.calls["GetObject"] == 1  # served from the cache
    assert bytes(second) == bytes(first) == ser.to_bytes()

    # a bounded cache: with room for one object, reading another evicts the first
    small = make_store(cache_bytes=ser.size + 100)
    scalls = Calls(small.client)
    store.put("k2", serialize(np.arange(3 * MiB, dtype=np.uint8) + 1))
    small.get("k")
    small.get("k")
    assert scalls.calls["GetObject"] == 1  # kept
    small.get("k2")
    assert scalls.calls["GetObject"] == 2
    small.get("k2")
    assert scalls.calls["GetObject"] == 2  # k2 kept
    small.get("k")
    assert scalls.calls["GetObject"] == 3  # k was evicted for it
    # an object larger than the whole cache is not kept
    tiny = make_store(cache_bytes=1000)
    tcalls = Calls(tiny.client)
    tiny.get("k")
    tiny.get("k")
    assert tcalls.calls["GetObject"] == 2


def test_a_node_downloads_an_object_once_for_all_its_executors(make_store, tmp_path):
    """Stores sharing a cache directory (one node's executors): the first get downloads into a file
    there, the others map that file; the directory stays under its size budget, oldest out."""
    shared = str(tmp_path / "objects")
    os.mkdir(shared)
    writer = make_store()
    arr = np.arange(12 * MiB, dtype=np.uint8)  # several ranged GETs
    writer.put("a", serialize(arr))
    writer.put("b", serialize(arr[::-1].copy()))
    first, second = make_store(cache_dir=shared), make_store(cache_dir=shared)
    c1, c2 = Calls(first.client), Calls(second.client)
    assert np.array_equal(deserialize(first.get("a")), arr)
    assert c1.calls["GetObject"] >= 2 and os.listdir(shared) == ["a"]
    assert np.array_equal(deserialize(second.get("a")), arr)
    assert c2.calls["GetObject"] == 0  # mapped from the node's file
    # A budget of one object: reading another removes the least recently used file.
    third = make_store(cache_dir=shared, cache_dir_bytes=serialize(arr).size + 100)
    third.get("b")
    assert os.listdir(shared) == ["b"]
    assert np.array_equal(deserialize(first.get("a")), arr)  # still mapped where it was read
    second.delete("b")
    assert os.listdir(shared) == []


def test_concurrent_gets_of_one_key_download_it_once(make_store):
    store = make_store(max_concurrency=2)
    ser = serialize(np.arange(12 * MiB, dtype=np.uint8))  # three ranges
    store.put("shared", ser)
    calls = Calls(store.client)
    barrier = threading.Barrier(4)
    views = [None] * 4

    def read(i):
        barrier.wait()
        views[i] = store.get("shared")

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "store.get hung"
    assert calls.calls["GetObject"] == 3
    assert all(v is views[0] for v in views)
    assert bytes(views[0]) == ser.to_bytes()


def test_delete_and_delete_prefix(make_store, s3_server, session):
    store = make_store()
    for i in range(5):
        store.put(f"o{i}", serialize(i))
    big = serialize(np.zeros(6 * MiB, dtype=np.uint8))  # multipart
    store.put("big", big)
    # a neighbour's prefix that shares the text of ours must survive delete_prefix
    neighbour = S3Store(s3_server.url(store.prefix + "-other"), session=session)
    neighbour.put("n", serialize("keep me"))

    assert store.get("o1") is not None  # cached now
    store.delete("o1")
    store.flush()
    with pytest.raises(ClientError) as e:
        store.get("o1")  # gone from the cache too
    assert e.value.response["Error"]["Code"] in ("NoSuchKey", "404")
    store.delete("o1")  # deleting a missing object is fine
    store.delete("never-existed")
    store.flush()
    assert _list(store) == sorted(f"{store.prefix}/{k}" for k in ["o0", "o2", "o3", "o4", "big"])

    assert store.delete_prefix() == 5
    assert _list(store) == []
    with pytest.raises(ClientError):
        store.get("big")
    assert deserialize(neighbour.get("n")) == "keep me"
    neighbour.delete_prefix()
    neighbour.close()


def _inject(client, operation: str, status: int, code: str, times: int):
    """Answer the first ``times`` attempts of ``operation`` with an HTTP error, without sending."""
    state = {"left": times, "injected": 0}
    lock = threading.Lock()

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **kwargs):
            yield self.body

    def handler(request, **kwargs):
        with lock:
            if state["left"] <= 0:
                return None
            state["left"] -= 1
            state["injected"] += 1
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Raw(body))

    client.meta.events.register_first(f"before-send.s3.{operation}", handler)
    return state


def test_retries_on_503_slowdown_and_5xx(make_store):
    store = make_store()
    calls = Calls(store.client)
    slow = _inject(store.client, "PutObject", 503, "SlowDown", times=2)
    store.put("r", serialize("retried"))
    assert slow["injected"] == 2
    assert calls.calls["PutObject"] == 1 and calls.attempts["PutObject"] == 3

    part = _inject(store.client, "UploadPart", 500, "InternalError", times=1)
    ser = serialize(np.ones(7 * MiB, dtype=np.uint8))
    store.put("rbig", ser)
    assert part["injected"] == 1
    assert calls.calls["UploadPart"] == 2 and calls.attempts["UploadPart"] == 3

    reader = make_store()
    rcalls = Calls(reader.client)
    get = _inject(reader.client, "GetObject", 503, "SlowDown", times=1)
    assert bytes(reader.get("rbig")) == ser.to_bytes()
    assert get["injected"] == 1 and rcalls.attempts["GetObject"] == rcalls.calls["GetObject"] + 1
    assert deserialize(reader.get("r")) == "retried"


def test_retries_give_up_and_a_failed_multipart_upload_is_aborted(make_store):
    store = make_store(max_attempts=2)
    _inject(store.client, "PutObject", 503, "SlowDown", times=10)
    with pytest.raises(ClientError) as e:
        store.put("x", serialize("never"))
    assert e.value.response["Error"]["Code"] == "SlowDown"

    calls = Calls(store.client)
    _inject(store.client, "UploadPart", 503, "SlowDown", times=1000)
    with pytest.raises(ClientError):
        store.put("y", serialize(np.ones(12 * MiB, dtype=np.uint8)))
    assert calls.calls["AbortMultipartUpload"] == 1
    assert calls.calls["CompleteMultipartUpload"] == 0
    assert _list(store) == []


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///dev/shm/x", "must start with s3://"),
        ("s3:/bucket/prefix", "no bucket"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Bad_Bucket/prefix", "not a valid bucket name"),
        ("s3://ab/prefix", "not a valid bucket name"),
        ("s3://192.168.0.1/prefix", "not a valid bucket name"),
        ("s3://key:secret@bucket/prefix", "credentials or a port"),
        ("s3://bucket/a//b", "empty path segment"),
        ("s3://bucket/a/../b", "'..' segments"),
        ("s3://bucket/p?endpoint=http://x", "unknown option 'endpoint'"),
        ("s3://bucket/p?region=", "option 'region' is empty"),
        ("s3://bucket/p#frag", "#fragment"),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_s3_url(url)


def test_good_urls_and_bad_keys(make_store):
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "", {})
    assert parse_s3_url("s3://my.bucket/a/b/") == ("my.bucket", "a/b", {})
    assert parse_s3_url("s3://b12/p?region=eu-west-1&endpoint_url=http://h:1") == (
        "b12",
        "p",
        {"region": "eu-west-1", "endpoint_url": "http://h:1"},
    )
    with pytest.raises(ValueError, match="part_size"):
        S3Store("s3://bucket/p", client=object(), part_size=MiB)
    store = make_store()
    for key in ["", "a/b", ".hidden"]:
        with pytest.raises(ValueError, match="bad object key"):
            store.put(key, serialize(1))


def test_usage_counts_every_request_by_billing_class_and_the_bytes(make_store):
    writer = make_store()
    wcalls = Calls(writer.client)
    small = serialize(b"x" * 1000)
    big = serialize(np.ones(7 * MiB, dtype=np.uint8))  # two parts of 5 MiB
    writer.put("s", small)
    slow = _inject(writer.client, "PutObject", 503, "SlowDown", times=1)
    writer.put("s2", small)  # retried once: S3 bills both requests
    assert slow["injected"] == 1
    writer.put("b", big)
    writer.delete("s")
    writer.flush()
    put_class = sum(wcalls.attempts[op] for op in
                    ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"))
    assert put_class == 3 + 1 + 2 + 1
    assert writer.usage() == {"put_requests": put_class, "get_requests": 0, "delete_requests": 1,
                              "bytes_uploaded": 2 * small.size + big.size, "bytes_downloaded": 0}
    assert writer.take_usage() == writer.usage()
    assert set(writer.take_usage().values()) == {0}  # each request is handed out once

    reader = make_store()
    rcalls = Calls(reader.client)
    reader.get("s2")
    reader.get("b")
    reader.get("b")  # from the cache: no request, no bytes
    assert reader.usage()["get_requests"] == rcalls.attempts["GetObject"] == 1 + 2
    assert reader.usage()["bytes_downloaded"] == small.size + big.size
    assert reader.usage()["put_requests"] == 0
