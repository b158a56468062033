"""The ``oauth_cb`` hook's checks, and the local broker's token signer (no broker here:
tests/test_kafka/test_security.py logs in with tokens against a real one)."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from streaminfer.errors import ConfigError
from streaminfer.kafka.access import refuse_access_errors
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.security import TOKEN_AUDIENCE, TOKEN_ISSUER, local_token, token_key
from streaminfer.kafka.tokens import TokenProvider, checked_token
from tests.support import wait_for

NOW = 1_800_000_000.0


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A token key on disk, and its public half as the broker reads it (one JWK)."""
    key_pem, jwks = token_key()
    path = tmp_path / "token-signer.pem"
    path.write_bytes(key_pem)
    [jwk] = json.loads(jwks)["keys"]
    return path, jwk


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(token: str, jwk: dict[str, str]) -> dict[str, object]:
    """The token's claims if its ES256 signature is the JWK's key's; InvalidSignature if not."""
    header, claims, signature = token.split(".")
    x, y = (int.from_bytes(_b64decode(jwk[c]), "big") for c in ("x", "y"))
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raw = _b64decode(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(_b64decode(header)) == {"alg": "ES256", "typ": "JWT", "kid": jwk["kid"]}
    return json.loads(_b64decode(claims))  # type: ignore[no-any-return]


def test_local_tokens_are_signed_by_the_key_the_broker_reads(
    key_file: tuple[Path, dict[str, str]],
) -> None:
    path, jwk = key_file
    before = time.time()
    token, expiry = local_token(f"key={path} subject=reader lifetime_s=90")
    claims = _verify(token, jwk)
    assert claims["sub"] == "reader"
    assert (claims["iss"], claims["aud"]) == (TOKEN_ISSUER, TOKEN_AUDIENCE)
    assert claims["exp"] == expiry and before + 89 <= expiry <= time.time() + 90
    header, body, signature = token.split(".")
    forged = _b64decode(body).replace(b"reader", b"admin!")
    with pytest.raises(InvalidSignature):
        _verify(
            f"{header}.{base64.urlsafe_b64encode(forged).decode().rstrip('=')}.{signature}", jwk
        )
    _, other_jwks = token_key()
    with pytest.raises(InvalidSignature):  # each key is new: no other one vouches for it
        _verify(token, json.loads(other_jwks)["keys"][0])


@pytest.mark.parametrize(
    "config",
    ["subject=admin", "key=/nonexistent subject=admin", "key={key} subject=admin lifetime_s=x"],
)
def test_local_token_names_a_config_it_cannot_use(
    config: str, key_file: tuple[Path, dict[str, str]]
) -> None:
    with pytest.raises(ConfigError, match=r"sasl\.oauthbearer\.config"):
        local_token(config.format(key=key_file[0]))


@pytest.mark.parametrize(
    "answer",
    [("t", NOW + 900), ("t", int(NOW) + 900), ("t", NOW + 60, "svc", {"logicalCluster": "lkc-1"})],
)
def test_answers_librdkafka_can_use_pass(answer: tuple[object, ...]) -> None:
    assert checked_token(answer, NOW) is answer


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("token", "expected (token, expiry) or (token, expiry, principal, extensions), got a str"),
        (("t", NOW + 60, "svc"), "got a tuple of 3"),
        (["t", NOW + 60], "got a list"),
        (("", NOW + 60), "the token must be a non-empty str, not a str"),
        ((b"t", NOW + 60), "the token must be a non-empty str, not a bytes"),
        (("t", "soon"), "the expiry must be seconds since the epoch, not a str"),
        (("t", True), "the expiry must be seconds since the epoch, not a bool"),
        (("t", NOW - 30), "the token expired 30 s ago"),
        (("t", (NOW + 900) * 1000), "milliseconds?"),
        (("t", NOW + 60, None, {}), "the principal must be a str, not a NoneType"),
        (("t", NOW + 60, "svc", {"k": 1}), "the extensions must be a dict of str to str"),
    ],
)
def test_answers_librdkafka_cannot_use_are_named(answer: object, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        checked_token(answer, NOW)
    assert why in str(raised.value)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (
            "tests.token_providers",
            "oauth_cb 'tests.token_providers': expected package.module:function",
        ),
        ("no_such.mod:fn", "no module named 'no_such'"),
        ("tests.token_providers:missing", "module tests.token_providers has no 'missing'"),
        ("tests.token_providers:NOT_A_FUNCTION", "int is not a function"),
    ],
)
def test_a_provider_that_cannot_be_loaded_is_named(spec: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        TokenProvider(spec, "")
    assert why in str(raised.value)


def test_the_first_token_is_asked_for_at_once(key_file: tuple[Path, dict[str, str]]) -> None:
    """A provider that cannot give one stops the command before librdkafka waits for it."""
    config = f"key={key_file[0]} subject=admin"
    with pytest.raises(ConfigError, match=r"expiring_in_milliseconds: .* milliseconds\?"):
        TokenProvider("tests.token_providers:expiring_in_milliseconds", config)
    down = key_file[0].with_name("down")
    down.touch()
    with pytest.raises(ConfigError) as raised:
        TokenProvider("tests.token_providers:down_while_flagged", f"{config} down_if={down}")
    assert str(raised.value) == (
        "oauth_cb tests.token_providers:down_while_flagged raised ConnectionError: "
        "the identity service is unreachable"
    )


def test_a_renewal_that_fails_is_logged_and_raised_to_librdkafka(
    key_file: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """And counted; the provider says when its last token has run out (a worker is not
    ready then), until a renewal works again."""
    down = key_file[0].with_name("down")
    config = f"key={key_file[0]} subject=admin lifetime_s=1 down_if={down}"
    provider = TokenProvider("tests.token_providers:down_while_flagged", config)
    token, expiry = provider(config)
    assert _verify(token, key_file[1])["sub"] == "admin" and expiry > time.time()
    assert provider.expires_at == expiry and not provider.expired
    down.touch()
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError):
        provider(config)
    assert "raised ConnectionError: the identity service is unreachable" in caplog.text
    assert provider.failures == 1 and provider.expires_at == expiry
    wait_for(lambda: provider.expired, 5, "the last token to run out")
    down.unlink()
    _, renewed = provider(config)
    assert provider.expires_at == renewed > time.time() and not provider.expired
    assert provider.failures == 1


def test_clients_get_the_provider_only_with_oauthbearer(
    key_file: tuple[Path, dict[str, str]],
) -> None:
    named = {"oauth_cb": "streaminfer.kafka.security:local_token"}
    config = f"key={key_file[0]} subject=admin"
    for mechanism in ({"sasl.mechanism": "OAUTHBEARER"}, {"sasl.mechanisms": "oauthbearer"}):
        properties = {**named, **mechanism, "sasl.oauthbearer.config": config}
        client = KafkaSettings(properties=properties).client_config()
        assert isinstance(client["oauth_cb"], TokenProvider)
    with pytest.raises(ConfigError, match=r"oauth_cb is used only with sasl\.mechanism="):
        KafkaSettings(properties={**named, "sasl.mechanism": "PLAIN"}).client_config()
    assert "oauth_cb" not in KafkaSettings().client_config()


@pytest.mark.parametrize(
    "why",
    [
        "Failed to acquire SASL OAUTHBEARER token: OAuth callback raised exception",
        "sasl_ssl://127.0.0.1:9093/1: SASL OAUTHBEARER mechanism handshake failed: Broker: "
        "Request not valid in current SASL state: broker's supported mechanisms: ",
        "sasl_ssl://127.0.0.1:9093/1: SASL OAUTHBEARER mechanism handshake failed: Local: "
        "Broker transport failure: broker's supported mechanisms: (n/a)",
    ],
)
def test_authentication_errors_a_retry_fixes_are_not_refused_logins(why: str) -> None:
    """librdkafka reports these as authentication errors too: a provider's failure to renew
    (asked again while the token lasts), a login whose connection broke, a re-login that
    came after its session ended. They must not end the command as a rejected login does."""
    refuse_access_errors(KafkaError(KafkaError._AUTHENTICATION, why))


def test_a_token_the_broker_rejects_is_a_refused_login() -> None:
    why = 'sasl_ssl://127.0.0.1:9093/1: SASL authentication error: {"status":"invalid_token"}'
    with pytest.raises(ConfigError, match="invalid_token"):
        refuse_access_errors(KafkaError(KafkaError._AUTHENTICATION, why))
