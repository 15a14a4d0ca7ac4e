"""pytest plugin: a moto server on 127.0.0.1 for tests of starburst's AWS control plane.

Registered for every test module by ``pytest_plugins`` in conftest.py (pytest puts tests/ on
``sys.path``). ``moto_server`` starts one ``ThreadedMotoServer`` per test session on a free port;
``aws`` resets it before each test and points boto3 at it through the environment
(``AWS_ENDPOINT_URL``, dummy credentials, ``AWS_DEFAULT_REGION``), so code under test creates its
clients the ordinary way. Nothing here can reach AWS: the endpoint is always the local server.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.request

import pytest

REGION = "us-east-1"
#: The account moto answers as (its default).
ACCOUNT_ID = "123456789012"


@dataclasses.dataclass
class AwsEnv:
    endpoint: str
    region: str
    account_id: str

    def session(self, region: str | None = None):
        """A boto3 session for the moto server, shared across tests (loading the service models
        for fresh sessions would cost about a second per test)."""
        region = region or self.region
        if region not in _SESSIONS:
            import boto3

            _SESSIONS[region] = boto3.Session(region_name=region)
        return _SESSIONS[region]

    def client(self, service: str, region: str | None = None):
        key = (service, region or self.region)
        if key not in _CLIENTS:
            _CLIENTS[key] = self.session(region).client(service)
        return _CLIENTS[key]


# The environment the sessions and clients read is the same in every test (the one server, dummy
# credentials), so they can outlive a test.
_SESSIONS: dict = {}
_CLIENTS: dict = {}


def _reset(endpoint: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.status


@pytest.fixture(scope="session")
def moto_server():
    """The endpoint URL of a moto server running in this process for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fake_credentials(monkeypatch, tmp_path) -> None:
    """Fake credentials and region, and no profile or config file of the developer's: no request
    can reach a real account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait for instance metadata
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path):
    """A clean moto account for one test, with the environment pointing boto3 at it."""
    _reset(moto_server)
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    fake_credentials(monkeypatch, tmp_path)
    yield AwsEnv(moto_server, REGION, ACCOUNT_ID)
