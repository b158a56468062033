"""SASL_SSL for the local broker: a CA, the broker's certificate, a SCRAM user, a token key.

``kafka start --security sasl_ssl`` makes the broker's client listener ask what managed
Kafka services ask: TLS with a certificate the client must trust, and either a
SCRAM-SHA-512 user name and password or an OAUTHBEARER token (a JWT, as Amazon MSK's IAM
and Entra ID hand out), which the broker checks against a signing key of its own.
Everything lives in the data dir's ``security/`` folder, made once when the storage is
formatted (SCRAM users of KRaft are written into the metadata at format):

* ``ca.pem``: the certificate authority clients trust (its key is not kept);
* ``broker.pem``: the broker's key and certificate chain (a PEM keystore), valid for the
  listener's address;
* ``client.properties``: librdkafka settings for the ``admin`` user, for ``-F``;
* ``token-signer.pem`` and ``jwks.json``: the key that signs tokens and its public half,
  which the broker reads;
* ``oauth.properties``: settings that log in as ``admin`` with tokens :func:`local_token`
  signs, through ``oauth_cb`` as a user's own provider would.

``admin`` is a super user: with the authorizer on, it is the one user ACLs do not bind.  A
token's user is its ``sub`` claim.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from streaminfer.errors import ConfigError
from streaminfer.kafka.config import read_properties_file

Security = Literal["plaintext", "sasl_ssl"]
SECURITY_CHOICES: tuple[Security, ...] = ("plaintext", "sasl_ssl")
MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
_CERT_DAYS = 825  # the longest validity clients accept for a server certificate
_SCRAM_ITERATIONS = 8192
# What the broker requires of a token besides its signature; local_token writes them.
TOKEN_ISSUER = "streaminfer-local-kafka"
TOKEN_AUDIENCE = "kafka"
_TOKEN_KEY_ID = "local-1"
_TOKEN_LIFETIME_S = 3600.0


class BrokerSecrets:
    """The files of one data dir's secured listener."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "security"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.pem"

    @property
    def client_properties(self) -> Path:
        return self.folder / "client.properties"

    @property
    def token_signer(self) -> Path:
        return self.folder / "token-signer.pem"

    @property
    def jwks(self) -> Path:
        return self.folder / "jwks.json"

    @property
    def oauth_properties(self) -> Path:
        return self.folder / "oauth.properties"

    @property
    def made(self) -> bool:
        return self.client_properties.exists()

    def create(self, host: str) -> None:
        """A new CA, a broker certificate for ``host`` and a random admin password."""
        ca_pem, keystore_pem = certificates(host)
        self._write_tls(ca_pem, keystore_pem, secrets.token_urlsafe(24))

    def ensure_token_key(self) -> None:
        """The token signing key and the files that use it, unless made already (a data dir
        from before tokens gets them at its next start)."""
        if not self.token_signer.exists():
            self._write_token_key(*token_key())

    def copy_into(self, data_dir: Path) -> None:
        """The same CA, broker certificate, admin password and token key for another node
        of a cluster, so that a client trusts and logs in to every node alike; its
        properties files name its own copies."""
        other = BrokerSecrets(data_dir)
        other._write_tls(self.ca.read_bytes(), self.keystore.read_bytes(), self.admin_password())
        other._write_token_key(self.token_signer.read_bytes(), self.jwks.read_text())

    def _write_tls(self, ca_pem: bytes, keystore_pem: bytes, password: str) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca.write_bytes(ca_pem)
        _write_private(self.keystore, keystore_pem)
        _write_private(self.client_properties, client_properties(password, self.ca).encode())

    def _write_token_key(self, key_pem: bytes, jwks: str) -> None:
        self.jwks.write_text(jwks)
        _write_private(self.oauth_properties, oauth_properties(self.token_signer, self.ca).encode())
        _write_private(self.token_signer, key_pem)  # last: its presence says all are made

    def jvm_options(self) -> list[str]:
        """Kafka 4 reads no OAUTHBEARER URL it is not told to allow."""
        return [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.jwks.as_uri()}"]

    def client_settings(self) -> dict[str, str]:
        """The admin user's librdkafka settings (the client properties file)."""
        return read_properties_file(self.client_properties)

    def admin_password(self) -> str:
        return self.client_settings()["sasl.password"]

    def scram_argument(self) -> str:
        """``kafka-storage format --add-scram``'s value that creates the admin user."""
        password = self.admin_password()
        return f"{MECHANISM}=[name={ADMIN_USER},password={password},iterations={_SCRAM_ITERATIONS}]"

    def listener_settings(self, listener: str, authorizer: bool) -> dict[str, str]:
        """The broker's settings for the SASL_SSL ``listener`` (also its inter-broker one)."""
        prefix = f"listener.name.{listener.lower()}"
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.admin_password()}";'
        )
        oauth = "org.apache.kafka.common.security.oauthbearer"
        settings = {
            "sasl.enabled.mechanisms": f"{MECHANISM},OAUTHBEARER",
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"{prefix}.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            f"{prefix}.oauthbearer.sasl.jaas.config": f"{oauth}.OAuthBearerLoginModule required;",
            f"{prefix}.oauthbearer.sasl.server.callback.handler.class": (
                f"{oauth}.OAuthBearerValidatorCallbackHandler"
            ),
            # A connection lasts no longer than its token, then logs in again with the next
            # one, as on Amazon MSK: a renewal that never came shows within a token's life.
            f"{prefix}.oauthbearer.connections.max.reauth.ms": "3600000",
            # Named: Kafka 4.1's default validator checks a token's signature only when
            # built by code, and a broker's configure never does (a tampered token passed).
            "sasl.oauthbearer.jwt.validator.class": f"{oauth}.BrokerJwtValidator",
            "sasl.oauthbearer.jwks.endpoint.url": self.jwks.as_uri(),
            "sasl.oauthbearer.expected.issuer": TOKEN_ISSUER,
            "sasl.oauthbearer.expected.audience": TOKEN_AUDIENCE,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
        }
        if authorizer:
            settings |= {
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # The controller listener stays plaintext on loopback: the broker's own
                # requests to its controller arrive there as ANONYMOUS, and without
                # CLUSTER_ACTION it could not even register.
                "super.users": f"User:{ADMIN_USER};User:ANONYMOUS",
            }
        return settings


def client_properties(password: str, ca: Path) -> str:
    lines = [
        f"# The local broker's {ADMIN_USER} user (a super user): streaminfer ... -F <this file>",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={MECHANISM}",
        f"sasl.username={ADMIN_USER}",
        f"sasl.password={password}",
        f"ssl.ca.location={ca}",
    ]
    return "\n".join(lines) + "\n"


def oauth_properties(signer: Path, ca: Path) -> str:
    lines = [
        f"# The local broker's {ADMIN_USER} user, by OAUTHBEARER tokens: streaminfer ... -F <this>",
        "security.protocol=SASL_SSL",
        "sasl.mechanism=OAUTHBEARER",
        "oauth_cb=streaminfer.kafka.security:local_token",
        f"sasl.oauthbearer.config=key={signer} subject={ADMIN_USER}",
        f"ssl.ca.location={ca}",
    ]
    return "\n".join(lines) + "\n"


def local_token(config: str) -> tuple[str, float]:
    """An ``oauth_cb`` for the local broker: a token for ``subject`` signed with ``key``.

    ``config`` is ``sasl.oauthbearer.config``: ``key=PATH subject=NAME [lifetime_s=S]``.
    The token is an ES256 JWT with the issuer and audience the broker expects.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    options = dict(pair.partition("=")[::2] for pair in config.split())
    if not options.get("key") or not options.get("subject"):
        raise ConfigError(f"sasl.oauthbearer.config {config!r}: expected key=PATH subject=NAME")
    try:
        key = serialization.load_pem_private_key(Path(options["key"]).read_bytes(), None)
        lifetime = float(options.get("lifetime_s", _TOKEN_LIFETIME_S))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sasl.oauthbearer.config {config!r}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{options['key']} is not the local broker's token key")
    now = time.time()
    expiry = int(now + lifetime)
    header = {"alg": "ES256", "typ": "JWT", "kid": _TOKEN_KEY_ID}
    claims: dict[str, object] = {
        "sub": options["subject"],
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "iat": int(now),
        "exp": expiry,
    }
    signed = f"{_json_b64(header)}.{_json_b64(claims)}"
    r, s = decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r || s
    return f"{signed}.{_b64(signature)}", float(expiry)


def token_key() -> tuple[bytes, str]:
    """A P-256 key to sign tokens with (PEM) and its public half as a JWK set (JSON)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "use": "sig",
        "alg": "ES256",
        "kid": _TOKEN_KEY_ID,
        "x": _b64(public.x.to_bytes(32, "big")),
        "y": _b64(public.y.to_bytes(32, "big")),
    }
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, json.dumps({"keys": [jwk]})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(value: Mapping[str, object]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def certificates(host: str) -> tuple[bytes, bytes]:
    """A self-signed CA (PEM) and a broker keystore (PEM: key, certificate, CA) for ``host``."""
    from cryptography import x509  # only here: `kafka --help` stays light
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streaminfer local Kafka CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    # Kafka's PEM keystore: an unencrypted PKCS#8 key, then the chain from the leaf up.
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca_pem, key_pem + cert.public_bytes(pem) + ca_pem


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)
