"""Mutual TLS between the head and its nodes: a per-cluster CA, generated and kept on the laptop.

Everything cryptographic is done by the ``cryptography`` library (ECDSA P-256 keys, SHA-256
signatures, X.509 v3 certificates) and by gRPC's BoringSSL; this module only chooses parameters.

Trust model
-----------
- ``ClusterCA.create(cluster_id)`` makes a self-signed CA for one cluster. Its key never leaves the
  machine running the head (the Fargate provider keeps it in memory only); ``save()`` can keep it
  under ``$STARBURST_HOME/tls/<cluster_id>/`` with 0600 files
  in a 0700 directory.
- The head gets a *client-only* certificate (``ExtendedKeyUsage: clientAuth``; CN and DNS SAN
  ``head.<cluster_id>.starburst``). It is issued on the laptop and never uploaded anywhere.
- Nodes get a *server-only* certificate (``serverAuth``; CN and DNS SAN
  ``node.<cluster_id>.starburst``). The Fargate provider issues them for 7 days and renews the
  head's and the nodes' certificates at half their life (new nodes get the new bundle; running
  ones trust the same CA); the CA's key lives only in the head's memory, as long as its cluster. Because the
  extended key usages differ, a node certificate cannot be presented as a client to another node:
  only the head can call a node, and a node cannot pose as the head.
- Nodes are reached by a public IP that the head learns only after launch, so the node certificate
  does not name the IP. The head dials ``<ip>:<port>`` with the channel option
  ``grpc.ssl_target_name_override = node.<cluster_id>.starburst`` (see :func:`channel_options`):
  the node is verified against *this cluster's CA and that name*, not against the IP. Another
  cluster's node, or anything signed by another CA, fails the handshake.
- The node's server requires a client certificate from the cluster CA
  (``require_client_auth=True``); a client without one, or with one from another CA, cannot
  complete the handshake and so cannot get a task run. :func:`peer_common_name` lets a servicer
  additionally check that the caller is the head.

Delivering node credentials (no secret in plain sight)
------------------------------------------------------
Anyone allowed to ``ecs:DescribeTasks`` / ``DescribeTaskDefinition`` can read a task's environment
and command, so the node's private key must not travel there. Instead:

1. At cluster start the head issues one node key + certificate for the cluster
   (:meth:`ClusterCA.issue_node`) and packs it with the CA certificate into a bundle
   (:func:`make_node_bundle`, a small JSON document; the CA *key* is never in it).
2. The head uploads the bundle to the cluster's S3 prefix, e.g.
   ``s3://<bucket>/<cluster_id>/tls/node-bundle.json`` (server-side encrypted). The bucket policy /
   task role grants ``s3:GetObject`` on that prefix to the cluster's task role only; the lifecycle
   rule and ``starburst down`` delete it.
3. The task's environment carries only two non-secret values (:func:`node_environment`):
   ``STARBURST_TLS_BUNDLE`` (the S3 URI) and ``STARBURST_TLS_BUNDLE_SHA256`` (its SHA-256).
   Knowing them does not let anyone read the object.
4. The node entrypoint fetches the object with its task-role credentials and opens it with
   :func:`open_node_bundle` (or :func:`load_node_bundle_from_env` with a fetch callable), which
   checks the SHA-256 (constant-time compare), that the bundle is for this cluster, and that the
   certificate was issued by the bundled CA and matches the key. The hash pins the exact CA the
   node will trust: even someone able to write to the prefix cannot make a node trust their CA.

If the bundle leaked, the holder could pose as *a node* of this one cluster toward the head until
the certificate expires, but could not call nodes or pose as the head (wrong key usage),
nor act for any other cluster.

The S3 calls themselves belong to the AWS backend; the functions here are pure.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from starburst import config

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ClusterCA", "Identity", "NodeBundle", "BundleIntegrityError",
    "node_server_name", "head_name",
    "server_credentials", "channel_credentials", "channel_options", "secure_channel_options",
    "peer_common_name",
    "make_node_bundle", "bundle_digest", "verify_bundle", "open_node_bundle",
    "node_environment", "load_node_bundle_from_env",
    "ENV_BUNDLE", "ENV_BUNDLE_SHA256",
]

#: Environment variables a node task is given: where its bundle is, and the bundle's SHA-256.
ENV_BUNDLE = "STARBURST_TLS_BUNDLE"
ENV_BUNDLE_SHA256 = "STARBURST_TLS_BUNDLE_SHA256"

_BUNDLE_FORMAT = "starburst-node-tls/1"
_CLUSTER_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Certificates start this long before "now", so a node whose clock is a little behind accepts them.
_CLOCK_SKEW = _dt.timedelta(minutes=5)


class BundleIntegrityError(ValueError):
    """A node credential bundle does not match its expected hash, cluster, or CA."""


def _check_cluster_id(cluster_id: str) -> str:
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.match(cluster_id):
        raise ValueError(
            f"cluster id {cluster_id!r} must be a DNS label: lowercase letters, digits and '-', "
            "at most 63 characters, not starting or ending with '-'")
    return cluster_id


def node_server_name(cluster_id: str) -> str:
    """The DNS name every node certificate of ``cluster_id`` carries, and the head verifies."""
    return f"node.{_check_cluster_id(cluster_id)}.starburst"


def head_name(cluster_id: str) -> str:
    """The name in the head's (client) certificate of ``cluster_id``."""
    return f"head.{_check_cluster_id(cluster_id)}.starburst"


def now() -> _dt.datetime:
    """The current UTC time, as certificates are dated."""
    return _dt.datetime.now(_dt.timezone.utc)


_now = now


def certificate_expiry(cert_pem: bytes) -> _dt.datetime:
    """When a PEM certificate stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def _general_name(san) -> x509.GeneralName:
    if isinstance(san, x509.GeneralName):
        return san
    if isinstance(san, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return x509.IPAddress(san)
    try:
        return x509.IPAddress(ipaddress.ip_address(str(san)))
    except ValueError:
        return x509.DNSName(str(san))


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs) only; a leaf signs its handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Identity:
    """What one endpoint needs for mutual TLS: the cluster's CA certificate, its own cert and key."""

    cluster_id: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return server_credentials(self.cert_pem, self.key_pem, self.ca_pem)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.cert_pem, self.key_pem, self.ca_pem)

    def channel_options(self) -> list[tuple[str, str]]:
        """Options for dialling a node of this cluster (by IP) with these credentials."""
        return channel_options(self.cluster_id)


class ClusterCA:
    """A cluster's certificate authority: an ECDSA P-256 key and a self-signed CA certificate."""

    def __init__(self, cluster_id: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.cluster_id = _check_cluster_id(cluster_id)
        self.cert = cert
        self.key = key

    # -- creation, persistence ------------------------------------------------------------------

    @classmethod
    def create(cls, cluster_id: str, valid_days: float = 30) -> "ClusterCA":
        _check_cluster_id(cluster_id)
        if valid_days <= 0:
            raise ValueError("valid_days must be positive")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "starburst"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"starburst cluster {cluster_id} CA"),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cluster_id, cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    # -- issuing --------------------------------------------------------------------------------

    def issue(self, common_name: str, sans: Iterable = (), *, is_server: bool = False,
              is_client: bool = False, valid_hours: float = 24,
              not_before: _dt.datetime | None = None) -> tuple[bytes, bytes]:
        """Issue a leaf certificate and a fresh P-256 key: ``(cert_pem, key_pem)``.

        ``sans`` are DNS names or IP addresses (strings, ``ipaddress`` objects, or
        ``x509.GeneralName``). ``is_server`` / ``is_client`` choose the extended key usages
        (serverAuth / clientAuth). Validity starts at ``not_before`` (default: five minutes ago, for
        clock skew) and lasts ``valid_hours``, never beyond the CA's own expiry.
        """
        if not (is_server or is_client):
            raise ValueError("a certificate must be for a server, a client, or both")
        if valid_hours <= 0:
            raise ValueError("valid_hours must be positive")
        names = [_general_name(s) for s in sans]
        if is_server and not names:
            raise ValueError("a server certificate needs at least one subject alternative name")
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before if not_before is not None else _now() - _CLOCK_SKEW
        if start.tzinfo is None:
            start = start.replace(tzinfo=_dt.timezone.utc)
        end = min(start + _dt.timedelta(hours=valid_hours), self.cert.not_valid_after_utc)
        usages = []
        if is_server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if is_client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "starburst"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_node(self, valid_hours: float = 12, extra_sans: Sequence = ()) -> Identity:
        """A node's server-only identity: DNS SAN ``node.<cluster_id>.starburst`` (plus extras)."""
        name = node_server_name(self.cluster_id)
        cert, key = self.issue(name, [name, *extra_sans], is_server=True, valid_hours=valid_hours)
        return Identity(self.cluster_id, self.cert_pem, cert, key)

    def issue_head(self, valid_hours: float = 24 * 7) -> Identity:
        """The head's client-only identity (CN and DNS SAN ``head.<cluster_id>.starburst``)."""
        name = head_name(self.cluster_id)
        cert, key = self.issue(name, [name], is_client=True, valid_hours=valid_hours)
        return Identity(self.cluster_id, self.cert_pem, cert, key)


# -- gRPC -------------------------------------------------------------------------------------------


def server_credentials(cert_pem: bytes, key_pem: bytes, ca_pem: bytes):
    """Server credentials that present ``cert_pem`` and require a client cert signed by ``ca_pem``."""
    import grpc

    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def channel_credentials(cert_pem: bytes, key_pem: bytes, ca_pem: bytes):
    """Channel credentials that trust only ``ca_pem`` and present ``cert_pem`` as the client."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def channel_options(cluster_id: str) -> list[tuple[str, str]]:
    """Verify the server as ``node.<cluster_id>.starburst`` whatever address is dialled."""
    name = node_server_name(cluster_id)
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def secure_channel_options(cluster_id: str) -> list[tuple]:
    """:data:`config.GRPC_OPTIONS` (message sizes, keepalives) plus :func:`channel_options`."""
    return [*config.GRPC_OPTIONS, *channel_options(cluster_id)]


def peer_common_name(context) -> str | None:
    """The verified peer certificate's common name, from a gRPC servicer context (sync or aio)."""
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode() if values else None


# -- node credential bundle -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeBundle:
    cluster_id: str
    identity: Identity
    not_after: _dt.datetime


def make_node_bundle(identity: Identity) -> bytes:
    """Serialize a node's identity (CA cert, node cert, node key; never the CA key) to bytes."""
    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    doc = {
        "format": _BUNDLE_FORMAT,
        "cluster_id": identity.cluster_id,
        "ca_cert": identity.ca_pem.decode(),
        "cert": identity.cert_pem.decode(),
        "key": identity.key_pem.decode(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def bundle_digest(data: bytes) -> str:
    """The SHA-256 of a bundle, hex: what goes into the task environment."""
    return hashlib.sha256(data).hexdigest()


def verify_bundle(data: bytes, expected_sha256: str) -> bool:
    """Whether ``data`` hashes to ``expected_sha256`` (constant-time comparison)."""
    if not isinstance(expected_sha256, str):
        return False
    return hmac.compare_digest(bundle_digest(data), expected_sha256.strip().lower())


def open_node_bundle(data: bytes, expected_sha256: str, cluster_id: str | None = None) -> NodeBundle:
    """Check and unpack a bundle: hash, format, cluster, cert issued by the CA, key matches cert."""
    if not verify_bundle(data, expected_sha256):
        raise BundleIntegrityError("node TLS bundle does not match its SHA-256")
    try:
        doc = json.loads(data)
        if doc.get("format") != _BUNDLE_FORMAT:
            raise BundleIntegrityError(f"unknown bundle format {doc.get('format')!r}")
        bundle_cluster = _check_cluster_id(doc["cluster_id"])
        ca_pem, cert_pem, key_pem = (doc[k].encode() for k in ("ca_cert", "cert", "key"))
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except BundleIntegrityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleIntegrityError(f"malformed node TLS bundle: {exc}") from exc
    if cluster_id is not None and bundle_cluster != cluster_id:
        raise BundleIntegrityError(f"bundle is for cluster {bundle_cluster!r}, not {cluster_id!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # InvalidSignature, ValueError, TypeError
        raise BundleIntegrityError("bundle certificate was not issued by the bundled CA") from exc
    if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise BundleIntegrityError("bundle key does not match its certificate")
    return NodeBundle(bundle_cluster, Identity(bundle_cluster, ca_pem, cert_pem, key_pem),
                      cert.not_valid_after_utc)


def node_environment(bundle_uri: str, data: bytes) -> dict[str, str]:
    """The (non-secret) environment entries telling a node where its bundle is and its hash."""
    return {ENV_BUNDLE: bundle_uri, ENV_BUNDLE_SHA256: bundle_digest(data)}


def load_node_bundle_from_env(env: Mapping[str, str], fetch: Callable[[str], bytes],
                              cluster_id: str | None = None) -> NodeBundle:
    """On a node: ``fetch(env[STARBURST_TLS_BUNDLE])`` (e.g. an S3 GET) and open it checked."""
    try:
        uri, digest = env[ENV_BUNDLE], env[ENV_BUNDLE_SHA256]
    except KeyError as exc:
        raise BundleIntegrityError(f"{exc.args[0]} is not set in the node's environment") from None
    return open_node_bundle(fetch(uri), digest, cluster_id=cluster_id)
