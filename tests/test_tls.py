"""Mutual TLS between head and nodes: real gRPC over 127.0.0.1 with certificates from starburst.tls."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import time
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from starburst import tls

CLUSTER = "c0ffee123456"
METHOD = "/starburst.test.Echo/Echo"
TIMEOUT = 5


def _echo(request: bytes, context) -> bytes:
    return b"echo:" + request + b"|peer=" + (tls.peer_common_name(context) or "").encode()


@contextlib.contextmanager
def serve(server_creds):
    """A tiny TLS gRPC server on 127.0.0.1 with a unary-unary bytes echo; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "starburst.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    assert port
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def call(port: int, channel_creds, options=(), address: str = "127.0.0.1") -> bytes:
    with grpc.secure_channel(f"{address}:{port}", channel_creds, options=list(options)) as channel:
        return channel.unary_unary(METHOD)(b"ping", timeout=TIMEOUT)


def assert_refused(port: int, channel_creds, options=()):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call(port, channel_creds, options)
    # A refused handshake fails fast with UNAVAILABLE; running into the timeout would hide a hang.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert time.monotonic() - started < TIMEOUT / 2


@pytest.fixture(scope="module")
def ca():
    return tls.ClusterCA.create(CLUSTER, valid_days=1)


@pytest.fixture(scope="module")
def other_ca():
    return tls.ClusterCA.create("another-cluster", valid_days=1)


@pytest.fixture(scope="module")
def node(ca):
    return ca.issue_node(valid_hours=1)


@pytest.fixture(scope="module")
def head(ca):
    return ca.issue_head(valid_hours=1)


@pytest.fixture(scope="module")
def node_port(node):
    with serve(node.server_credentials()) as port:
        yield port


# -- connections ------------------------------------------------------------------------------------


def test_head_with_cluster_cert_gets_an_answer(node_port, head):
    reply = call(node_port, head.channel_credentials(), head.channel_options())
    assert reply == b"echo:ping|peer=" + tls.head_name(CLUSTER).encode()


def test_client_without_client_cert_is_refused(node_port, head):
    creds = grpc.ssl_channel_credentials(root_certificates=head.ca_pem)
    assert_refused(node_port, creds, head.channel_options())


def test_client_with_cert_from_another_ca_is_refused(node_port, ca, other_ca):
    # Its own CA's cert, its own name: everything right except who signed it.
    cert, key = other_ca.issue(tls.head_name(CLUSTER), [tls.head_name(CLUSTER)], is_client=True)
    creds = tls.channel_credentials(cert, key, ca.cert_pem)  # trusts our CA for the server
    assert_refused(node_port, creds, tls.channel_options(CLUSTER))


def test_server_with_cert_from_another_ca_is_refused_by_head(head, other_ca):
    # An impostor node: right name, right client-CA (so only the head's check can refuse it).
    name = tls.node_server_name(CLUSTER)
    cert, key = other_ca.issue(name, [name], is_server=True)
    impostor = tls.server_credentials(cert, key, head.ca_pem)
    with serve(impostor) as port:
        assert_refused(port, head.channel_credentials(), head.channel_options())


def test_server_from_another_cluster_is_refused_by_name(ca, head):
    # Signed by the right CA but for another name: the name check, not just the CA, matters.
    cert, key = ca.issue("node.other.starburst", ["node.other.starburst"], is_server=True)
    with serve(tls.server_credentials(cert, key, ca.cert_pem)) as port:
        assert_refused(port, head.channel_credentials(), head.channel_options())


def test_name_override_verifies_dns_san_when_dialling_an_ip(node_port, node, head):
    sans = x509.load_pem_x509_certificate(node.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [tls.node_server_name(CLUSTER)]
    assert sans.get_values_for_type(x509.IPAddress) == []
    # Without the override the name checked is 127.0.0.1, which the cert does not carry.
    assert_refused(node_port, head.channel_credentials())
    # With it, the same address is accepted (and so is the full option set with keepalives).
    assert call(node_port, head.channel_credentials(), head.channel_options()).startswith(b"echo:")
    assert call(node_port, head.channel_credentials(),
                tls.secure_channel_options(CLUSTER)).startswith(b"echo:")


def test_ip_san_works_without_override(ca, head):
    cert, key = ca.issue("by-ip", ["127.0.0.1"], is_server=True)
    with serve(tls.server_credentials(cert, key, ca.cert_pem)) as port:
        assert call(port, head.channel_credentials()).startswith(b"echo:")


def test_node_cert_cannot_act_as_client(node_port, node):
    # A leaked node bundle must not let its holder call nodes: the node cert lacks clientAuth.
    assert_refused(node_port, node.channel_credentials(), node.channel_options())


def _expired(ca, **kw):
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    return ca.issue(not_before=start, valid_hours=1, **kw)


def test_expired_client_cert_refused(node_port, ca):
    cert, key = _expired(ca, common_name=tls.head_name(CLUSTER), sans=[tls.head_name(CLUSTER)],
                         is_client=True)
    assert x509.load_pem_x509_certificate(cert).not_valid_after_utc < dt.datetime.now(dt.timezone.utc)
    assert_refused(node_port, tls.channel_credentials(cert, key, ca.cert_pem),
                   tls.channel_options(CLUSTER))


def test_expired_server_cert_refused(ca, head):
    name = tls.node_server_name(CLUSTER)
    cert, key = _expired(ca, common_name=name, sans=[name], is_server=True)
    with serve(tls.server_credentials(cert, key, ca.cert_pem)) as port:
        assert_refused(port, head.channel_credentials(), head.channel_options())


# -- certificates -----------------------------------------------------------------------------------


def test_certificate_extensions(ca, node, head):
    ca_cert = ca.cert
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    node_cert = x509.load_pem_x509_certificate(node.cert_pem)
    head_cert = x509.load_pem_x509_certificate(head.cert_pem)
    for cert in (node_cert, head_cert):
        cert.verify_directly_issued_by(ca_cert)
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign
        assert cert.public_key().curve.name == "secp256r1"
    assert list(node_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(head_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    cert, _ = ca.issue("both", ["10.0.0.7", "x.example"], is_server=True, is_client=True,
                       valid_hours=10_000)
    cert = x509.load_pem_x509_certificate(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert san.get_values_for_type(x509.DNSName) == ["x.example"]
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc  # clamped to the CA's life
    with pytest.raises(ValueError):
        ca.issue("nothing", ["x"])
    with pytest.raises(ValueError):
        tls.ClusterCA.create("Not_A_Label")


# -- node credential bundle -------------------------------------------------------------------------


def test_bundle_roundtrip_and_tamper_detection(ca, node, other_ca, head):
    data = tls.make_node_bundle(node)
    assert b"PRIVATE KEY" in data and ca.key_pem.decode() not in data.decode()  # never the CA key
    env = tls.node_environment("s3://bucket/c0ffee123456/tls/node-bundle.json", data)
    assert set(env) == {tls.ENV_BUNDLE, tls.ENV_BUNDLE_SHA256}
    assert "PRIVATE" not in "".join(env.values())  # nothing secret in the task environment
    fetched = []
    bundle = tls.load_node_bundle_from_env(env, lambda uri: fetched.append(uri) or data, CLUSTER)
    assert fetched == [env[tls.ENV_BUNDLE]]
    assert bundle.identity == node and bundle.cluster_id == CLUSTER

    digest = env[tls.ENV_BUNDLE_SHA256]
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(tls.BundleIntegrityError):
        tls.open_node_bundle(bytes(flipped), digest)
    assert not tls.verify_bundle(bytes(flipped), digest)
    assert tls.verify_bundle(data, digest)

    # A well-formed swap (another CA's node identity) with a re-computed hash: the hash in the
    # environment still pins the original.
    other_node = other_ca.issue_node()
    swapped = tls.make_node_bundle(tls.Identity(CLUSTER, other_node.ca_pem, other_node.cert_pem,
                                                other_node.key_pem))
    with pytest.raises(tls.BundleIntegrityError):
        tls.open_node_bundle(swapped, digest)
    # Consistent hash but wrong cluster, or a cert not from the bundled CA: refused too.
    with pytest.raises(tls.BundleIntegrityError):
        tls.open_node_bundle(data, digest, cluster_id="another-cluster")
    mixed = json.loads(data)
    mixed["ca_cert"] = other_ca.cert_pem.decode()
    mixed = json.dumps(mixed).encode()
    with pytest.raises(tls.BundleIntegrityError, match="not issued"):
        tls.open_node_bundle(mixed, tls.bundle_digest(mixed))
    with pytest.raises(tls.BundleIntegrityError):
        tls.load_node_bundle_from_env({}, lambda uri: data)

    # The unpacked identity serves, and the head accepts it.
    with serve(bundle.identity.server_credentials()) as port:
        assert call(port, head.channel_credentials(), head.channel_options()).startswith(b"echo:")
