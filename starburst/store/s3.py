"""The S3 object store: one S3 object per value under the cluster's prefix (``s3://bucket/prefix``).

- ``put`` streams ``Serialized.chunks()``: a value up to ``part_size`` goes up in one PutObject, a
  larger one as a multipart upload whose parts are sent in parallel (``max_concurrency`` threads).
  Every request carries a checksum (``checksum="CRC32"`` by default; the server rejects a body that
  doesn't match it), and botocore's retry configuration (``standard`` mode) retries throttling
  (503 SlowDown) and 5xx answers with exponential backoff and jitter.
- ``get`` fetches the first ``part_size`` bytes with a ranged GET, learns the object's size from
  its ``Content-Range``, and reads the rest with parallel ranged GETs straight into one preallocated
  page-aligned buffer (no copy beyond the download). Objects read are kept in a small LRU cache
  bounded by bytes (``cache_bytes``, by default 1 GiB or 1/8 of memory), so a process that reads an object twice
  downloads it once (concurrent readers of one key share one download). With ``cache_dir`` (a
  node's executors share one: ``$STARBURST_CACHE_DIR``), downloads land in files there, which the
  node's other processes map instead of downloading again (least recently used files are removed
  past ``cache_dir_bytes``). The views handed out are read-only. Downloads are checked for length
  only: S3 returns no checksum for a ranged GET, so integrity on the way down rests on TLS (the
  checksums are verified by the server on upload).
- Every HTTP request the client sends (retries included: S3 bills each) is counted by class, and
  the bytes put and got too (``usage()``, ``take_usage()``): the Fargate cost meter adds them up.
- ``delete`` schedules one object's removal (batched, in the background; ``flush`` waits; a missing
  object is fine); ``delete_prefix`` removes everything under
  the prefix (and aborts unfinished multipart uploads there), for cluster shutdown.

The client is built from ``client``, else ``session``, else a default boto3 session; the endpoint
comes from the usual boto3 configuration (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) or from
the URL's query: ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1``.
"""

from __future__ import annotations

import collections
import http.client
import logging
import mmap
import os
import tempfile
import re
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from botocore.exceptions import ClientError

from ..serialization import Serialized
from .base import ObjectStore

log = logging.getLogger("starburst.store")

MiB = 1024 * 1024
GiB = 1024 * MiB

#: S3's limits on multipart uploads.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CHECKSUMS = ("CRC32", "SHA256", "SHA1", "CRC32C", "CRC64NVME")
_QUERY_KEYS = ("endpoint_url", "region")


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``s3://bucket/some/prefix[?endpoint_url=...&region=...]`` -> (bucket, "some/prefix", options).

    The prefix has no leading or trailing slash (it may be empty). Raises ValueError, naming the
    problem, for anything else.
    """
    if not isinstance(url, str):
        raise ValueError(f"S3 store URL must be a string, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"S3 store URL {url!r} must start with s3:// (e.g. s3://my-bucket/prefix)")
    if parts.fragment:
        raise ValueError(f"S3 store URL {url!r} must not have a #fragment")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"S3 store URL {url!r} has no bucket (expected s3://bucket/prefix)")
    if "@" in bucket or ":" in bucket:
        raise ValueError(f"S3 store URL {url!r}: credentials or a port don't belong in the bucket name")
    if not _BUCKET_RE.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise ValueError(
            f"S3 store URL {url!r}: {bucket!r} is not a valid bucket name "
            "(3-63 characters: lowercase letters, digits, '.' and '-')"
        )
    prefix = parts.path.strip("/")
    if "//" in prefix:
        raise ValueError(f"S3 store URL {url!r}: the prefix has an empty path segment")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise ValueError(f"S3 store URL {url!r}: the prefix must not contain '.' or '..' segments")
    options: dict[str, str] = {}
    if parts.query:
        try:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"S3 store URL {url!r}: malformed query {parts.query!r}") from None
        for name, value in pairs:
            if name not in _QUERY_KEYS:
                raise ValueError(
                    f"S3 store URL {url!r}: unknown option {name!r} (known: {', '.join(_QUERY_KEYS)})"
                )
            if not value:
                raise ValueError(f"S3 store URL {url!r}: option {name!r} is empty")
            options[name] = value
    return bucket, prefix, options


class _LRUCache:
    """Read-only views by key, evicting the least recently used past ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: collections.OrderedDict[str, memoryview] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> memoryview | None:
        with self._lock:
            view = self._items.get(key)
            if view is not None:
                self._items.move_to_end(key)
            return view

    def put(self, key: str, view: memoryview) -> None:
        if view.nbytes > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old.nbytes
            self._items[key] = view
            self.size += view.nbytes
            while self.size > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.size -= evicted.nbytes

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items


class _Abandoned(Exception):
    """A part not sent because another part of the same upload failed."""


def _iter_parts(value: Serialized, part_size: int):
    """The serialized layout cut into ``part_size`` pieces (the last may be shorter), as bytes."""
    pending: list[memoryview] = []
    have = 0
    for chunk in value.chunks():
        view = memoryview(chunk).cast("B")
        while view.nbytes:
            take = min(part_size - have, view.nbytes)
            pending.append(view[:take])
            have += take
            view = view[take:]
            if have == part_size:
                yield b"".join(pending)
                pending, have = [], 0
    if have:
        yield b"".join(pending)


#: S3 operations billed in the PUT, COPY, POST, LIST class; deletes and aborts are free; every other
#: operation (GetObject, HeadObject...) is in the GET class.
PUT_CLASS = frozenset({
    "PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
    "CompleteMultipartUpload", "ListObjects", "ListObjectsV2", "ListMultipartUploads", "ListParts",
    "ListBuckets", "PostObject",
})
FREE_CLASS = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})
_USAGE_FIELDS = ("put_requests", "get_requests", "delete_requests", "bytes_uploaded", "bytes_downloaded")


class S3Usage:
    """Counts of S3 requests by billing class and of bytes put and got (thread-safe)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_USAGE_FIELDS, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def request(self, operation: str) -> None:
        """Count one HTTP request of S3 operation ``operation``."""
        if operation in PUT_CLASS:
            self.add("put_requests")
        elif operation in FREE_CLASS:
            self.add("delete_requests")
        else:
            self.add("get_requests")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class S3Store(ObjectStore):
    """Values as S3 objects ``<prefix>/<key>`` in ``bucket``; see the module docstring."""

    def __init__(
        self,
        url: str,
        session=None,
        client=None,
        max_concurrency: int = 8,
        part_size: int = 8 * MiB,
        cache_bytes: int | None = None,
        cache_dir: str | None = None,
        cache_dir_bytes: int = 4 * GiB,
        checksum: str = "CRC32",
        max_attempts: int = 8,
    ) -> None:
        self.bucket, self.prefix, options = parse_s3_url(url)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        if checksum not in _CHECKSUMS:
            raise ValueError(f"checksum must be one of {', '.join(_CHECKSUMS)}, not {checksum!r}")
        self.url = url
        self.max_concurrency = max_concurrency
        self.part_size = part_size
        self.checksum = checksum
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                max_pool_connections=max(10, 2 * max_concurrency),
                tcp_keepalive=True,
            )
            session = session or boto3.Session()
            kwargs = {}
            if "endpoint_url" in options:
                kwargs["endpoint_url"] = options["endpoint_url"]
            if "region" in options:
                kwargs["region_name"] = options["region"]
            client = session.client("s3", config=config, **kwargs)
        self.client = client
        self._usage = S3Usage()
        self._reported = dict.fromkeys(_USAGE_FIELDS, 0)
        self._reported_lock = threading.Lock()
        events = getattr(getattr(client, "meta", None), "events", None)
        if events is not None:  # every HTTP request sent, retries included (a Stubber sends none)
            events.register("before-send.s3", self._count_request, unique_id=f"starburst-usage-{id(self)}")
        self._cache = _LRUCache(default_cache_bytes() if cache_bytes is None else cache_bytes)
        #: A directory shared by the processes of one node (``$STARBURST_CACHE_DIR`` on Fargate
        #: nodes): an object downloaded by one executor is mapped from there by the others.
        self.cache_dir = cache_dir if cache_dir is not None else os.environ.get("STARBURST_CACHE_DIR") or None
        self.cache_dir_bytes = cache_dir_bytes
        self._added = 0  # bytes downloaded into cache_dir since the last eviction pass
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="starburst-s3")
        self._deletes: list[str] = []
        self._delete_lock = threading.Lock()
        self._deleter: Future | None = None

    # -- usage (for the cost meter) ----------------------------------------------------------

    def _count_request(self, event_name: str = "", **_: Any) -> None:
        self._usage.request(event_name.rsplit(".", 1)[-1])

    def usage(self) -> dict[str, int]:
        """Requests by class and bytes up and down since this store was opened: ``put_requests``
        (PUT/COPY/POST/LIST), ``get_requests`` (GET and other), ``delete_requests`` (free),
        ``bytes_uploaded``, ``bytes_downloaded``."""
        return self._usage.snapshot()

    def take_usage(self) -> dict[str, int]:
        """``usage()`` since the last ``take_usage()`` (each request is handed out once)."""
        with self._reported_lock:
            now = self._usage.snapshot()
            delta = {k: now[k] - self._reported[k] for k in _USAGE_FIELDS}
            self._reported = now
        return delta

    # -- keys --------------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- put ---------------------------------------------------------------------------------

    def put(self, key: str, value: Serialized) -> None:
        name = self.object_key(key)
        self._cache.discard(key)
        size = value.size
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        if size <= part_size:
            body = b"".join(value.chunks())
            self.client.put_object(
                Bucket=self.bucket, Key=name, Body=body, ChecksumAlgorithm=self.checksum
            )
        else:
            self._put_multipart(name, value, part_size)
        self._usage.add("bytes_uploaded", size)

    def _put_multipart(self, name: str, value: Serialized, part_size: int) -> None:
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=name, ChecksumAlgorithm=self.checksum
        )["UploadId"]
        field = "Checksum" + self.checksum
        # At most 2 x max_concurrency parts in memory: the producer waits for a free slot.
        slots = threading.BoundedSemaphore(2 * self.max_concurrency)
        futures: list = []
        failed = threading.Event()
        try:

            def upload(number: int, body: bytes) -> dict:
                try:
                    if failed.is_set():
                        raise _Abandoned()
                    r = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ChecksumAlgorithm=self.checksum,
                    )
                except BaseException:
                    failed.set()
                    raise
                finally:
                    slots.release()
                part = {"PartNumber": number, "ETag": r["ETag"]}
                if field in r:
                    part[field] = r[field]
                return part

            for number, body in enumerate(_iter_parts(value, part_size), 1):
                slots.acquire()
                futures.append(self._pool.submit(upload, number, body))
                if failed.is_set():  # stop producing parts; result() below raises the error
                    break
            wait(futures)
            errors = [f.exception() for f in futures if f.exception() is not None]
            real = [e for e in errors if not isinstance(e, _Abandoned)]
            if errors:
                raise (real or errors)[0]
            parts = [f.result() for f in futures]
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            for f in futures:
                f.cancel()
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the bucket's lifecycle rule cleans up what this couldn't
                pass
            raise

    # -- get ---------------------------------------------------------------------------------

    def get(self, key: str) -> memoryview:
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cached_file(key)
        if cached is not None:
            return cached
        name = self.object_key(key)
        # One download per key at a time: concurrent readers of the same key wait for it.
        with self._inflight_lock:
            pending = self._inflight.get(key)
            owner = pending is None
            if owner:
                pending = self._inflight[key] = Future()
        assert pending is not None
        if not owner:
            return pending.result()
        try:
            result = self._download(key, name)
            pending.set_result(result)
            return result
        except BaseException as e:
            pending.set_exception(e)
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

    def _download(self, key: str, name: str) -> memoryview:
        try:
            first = self.client.get_object(
                Bucket=self.bucket, Key=name, Range=f"bytes=0-{self.part_size - 1}"
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object
                return memoryview(b"")
            raise
        total = _total_size(first)
        if total == 0:
            first["Body"].close()
            return memoryview(b"")
        staging = None
        if self.cache_dir:
            # Downloaded into a file that the node's other processes map instead of downloading.
            fd, staging = tempfile.mkstemp(prefix=f".{key}.", dir=self.cache_dir)
            try:
                os.ftruncate(fd, total)
                buf = mmap.mmap(fd, total)
            finally:
                os.close(fd)
        else:
            buf = mmap.mmap(-1, total)  # page-aligned, zero pages until written
        view = memoryview(buf)
        # A server that ignores Range answers 200 with the whole object: then that is all of it.
        head = min(self.part_size, total) if first.get("ContentRange") else total
        _read_into(first["Body"], view[:head])
        if total > head:
            ranges = [(o, min(o + self.part_size, total)) for o in range(head, total, self.part_size)]

            def fetch(start: int, end: int) -> None:
                r = self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes={start}-{end - 1}")
                _read_into(r["Body"], view[start:end])

            futures = [self._pool.submit(fetch, s, e) for s, e in ranges]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                if staging is not None:
                    os.unlink(staging)
                raise
        if staging is not None and self.cache_dir:
            os.rename(staging, os.path.join(self.cache_dir, key))  # complete: others may map it now
            self._added += total
            if self._added > self.cache_dir_bytes // 8:  # look at the directory now and then, not per get
                self._added = 0
                self._evict()
        self._usage.add("bytes_downloaded", total)
        result = view.toreadonly()
        self._cache.put(key, result)
        return result

    # -- the node-wide file cache ------------------------------------------------------------

    def _cached_file(self, key: str) -> memoryview | None:
        """The object from the node's cache directory, if another process downloaded it."""
        if not self.cache_dir:
            return None
        path = os.path.join(self.cache_dir, key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                view = memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))
            os.utime(path)  # recently used: evicted last
        except (FileNotFoundError, ValueError):
            return None
        self._cache.put(key, view)
        return view

    def _evict(self) -> None:
        """Keep the cache directory under ``cache_dir_bytes``: least recently used files go first
        (a process that has one mapped keeps its pages until it lets go)."""
        entries = []
        with os.scandir(self.cache_dir) as it:
            for entry in it:
                if not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    entries.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cache_dir_bytes:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size

    # -- delete ------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Schedule the object's deletion and return at once (the head calls this on its event
        loop); deletions are sent in batches of up to 1000 keys. ``flush()`` waits for them."""
        self._cache.discard(key)
        if self.cache_dir:
            try:
                os.unlink(os.path.join(self.cache_dir, key))
            except FileNotFoundError:
                pass
        name = self.object_key(key)
        with self._delete_lock:
            self._deletes.append(name)
            if self._deleter is None:
                self._deleter = self._pool.submit(self._send_deletes)

    def _send_deletes(self) -> None:
        while True:
            with self._delete_lock:
                batch, self._deletes = self._deletes[:1000], self._deletes[1000:]
                if not batch:
                    self._deleter = None
                    return
            try:
                r = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
                errors = r.get("Errors") or []
            except Exception as exc:  # noqa: BLE001 - the lifecycle rule is the backstop
                errors = [{"Key": batch[0], "Code": type(exc).__name__, "Message": str(exc)}]
            if errors:
                e = errors[0]
                log.warning("could not delete %d object(s) from s3://%s, e.g. %s: %s %s",
                            len(errors), self.bucket, e.get("Key"), e.get("Code"), e.get("Message"))

    def flush(self) -> None:
        """Wait until every deletion asked for so far has been sent."""
        while True:
            with self._delete_lock:
                deleter = self._deleter
            if deleter is None:
                return
            deleter.result()

    def delete_prefix(self) -> int:
        """Delete every object under the prefix; returns how many. For cluster shutdown."""
        self._cache.clear()
        prefix = f"{self.prefix}/" if self.prefix else ""
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                batch = keys[i : i + 1000]
                r = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                errors = r.get("Errors") or []
                if errors:
                    e = errors[0]
                    raise OSError(
                        f"S3 refused to delete {len(errors)} object(s) under s3://{self.bucket}/{prefix}, "
                        f"e.g. {e.get('Key')}: {e.get('Code')} {e.get('Message')}"
                    )
                deleted += len(batch)
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for u in uploads.get("Uploads", []):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                )
        except Exception:  # noqa: BLE001 - the lifecycle rule's abort-incomplete-uploads is the backstop
            pass
        return deleted

    def destroy(self) -> None:
        self.flush()
        self.delete_prefix()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
        self._cache.clear()


def default_cache_bytes() -> int:
    """1 GiB, or less on a small machine: together, the caches of a node's executors (one per
    CPU, each with its own) take at most a quarter of its memory."""
    try:
        import psutil

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(1 * GiB, psutil.virtual_memory().total // (4 * max(1, cpus)))
    except Exception:  # noqa: BLE001
        return 256 * MiB


def _total_size(response: dict) -> int:
    content_range = response.get("ContentRange")
    if content_range:  # "bytes 0-8388607/67108928"
        return int(content_range.rsplit("/", 1)[1])
    return int(response["ContentLength"])  # an empty object answers 200 without a range


def _read_into(body, view: memoryview) -> None:
    """Read exactly ``view.nbytes`` from a botocore StreamingBody into ``view``.

    When the body is a plain (not encoded) urllib3 response over http.client, the socket reads
    straight into ``view`` (``recv_into``: no intermediate bytes objects), and the connection goes
    back to the pool afterwards; otherwise it falls back to urllib3's own reads.
    """
    raw: Any = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    n = 0
    try:
        if (
            isinstance(fp, http.client.HTTPResponse)
            and getattr(raw, "_fp_bytes_read", None) == 0
            and not (raw.headers.get("content-encoding") or "").strip()
            and not fp.chunked
        ):
            while n < view.nbytes:
                got = fp.readinto(view[n:])
                if not got:
                    break
                n += got
            if n == view.nbytes and fp.isclosed():  # body fully consumed: the connection is reusable
                raw.release_conn()
        elif raw is not None and hasattr(raw, "readinto"):
            while n < view.nbytes:
                got = raw.readinto(view[n:])
                if not got:
                    break
                n += got
        else:
            while n < view.nbytes:
                data = body.read(min(view.nbytes - n, MiB))
                if not data:
                    break
                view[n : n + len(data)] = data
                n += len(data)
        if n != view.nbytes:
            raise OSError(f"S3 response ended after {n} of {view.nbytes} bytes")
    finally:
        body.close()
