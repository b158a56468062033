"""SASL_SSL for the local broker: a CA, the broker's certificate, a SCRAM user, a client file.

``kafka start --security sasl_ssl`` makes the broker's client listener ask what managed
Kafka services ask: TLS with a certificate the client must trust, and a SCRAM-SHA-512 user
name and password.  Everything lives in the data dir's ``security/`` folder, made once when
the storage is formatted (SCRAM users of KRaft are written into the metadata at format):

* ``ca.pem``: the certificate authority clients trust (its key is not kept);
* ``broker.pem``: the broker's key and certificate chain (a PEM keystore), valid for the
  listener's address;
* ``client.properties``: librdkafka settings for the ``admin`` user, for ``-F``.

``admin`` is a super user: with the authorizer on, it is the one user ACLs do not bind.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path
from typing import Literal

from streaminfer.kafka.config import read_properties_file

Security = Literal["plaintext", "sasl_ssl"]
SECURITY_CHOICES: tuple[Security, ...] = ("plaintext", "sasl_ssl")
MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
_CERT_DAYS = 825  # the longest validity clients accept for a server certificate
_SCRAM_ITERATIONS = 8192


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

    def create(self, host: str) -> None:
        """A new CA, a broker certificate for ``host`` and a random admin password."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_pem, keystore_pem = certificates(host)
        self.ca.write_bytes(ca_pem)
        _write_private(self.keystore, keystore_pem)
        password = secrets.token_urlsafe(24)
        _write_private(self.client_properties, client_properties(password, self.ca).encode())

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
        prefix = f"listener.name.{listener.lower()}.{MECHANISM.lower()}"
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.admin_password()}";'
        )
        settings = {
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"{prefix}.sasl.jaas.config": jaas,
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
