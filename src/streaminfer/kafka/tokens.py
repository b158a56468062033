"""OAUTHBEARER tokens from the user's code: ``-X oauth_cb=package.module:function``.

confluent-kafka takes a Python function as its ``oauth_cb`` property; a properties file or
``-X`` can only name one, so ``oauth_cb`` names it and each client gets the function.  The
contract is confluent-kafka's, so a callback written for it works unchanged (Amazon MSK's
IAM signer, an identity provider's SDK): it is given ``sasl.oauthbearer.config``'s string
and returns ``(token, expiry)``, the expiry in seconds since the epoch, or ``(token,
expiry, principal, extensions)``.

* Each client's config asks for one token at once, in the caller's thread: a provider that
  raises, or returns what librdkafka cannot use, is a ``ConfigError`` naming it, not
  librdkafka's "OAuth token not set" ten seconds later.
* librdkafka asks again at 80 % of a token's lifetime, from its own thread.  A failure then
  is an outage, not a configuration error: it is logged, librdkafka asks again every 10 s,
  and its error does not stop the command
  (:func:`streaminfer.kafka.access.refuse_access_errors`).  The client goes on while its
  token lasts, then waits for the next one with what it has to send.
* A provider keeps when its last token expires and how many renewals failed: a worker is
  not ready while one of its clients' tokens has expired, and exports both as metrics,
  so a provider that fails for good shows in Kubernetes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streaminfer.errors import ConfigError
from streaminfer.plugins import load_object

OPTION = "oauth_cb"
_CONFIG = "sasl.oauthbearer.config"
_MECHANISM_KEYS = ("sasl.mechanism", "sasl.mechanisms")  # librdkafka takes either spelling
_YEAR_S = 365 * 86_400
LOG = logging.getLogger(__name__)

Token = tuple[Any, ...]


class TokenProvider:
    """The ``oauth_cb`` a client gets: the user's function, its answers checked."""

    def __init__(self, spec: str, config: str) -> None:
        function = load_object(spec, OPTION, "package.module:function")
        if not callable(function):
            raise ConfigError(f"{OPTION} {spec}: {type(function).__name__} is not a function")
        self.spec = spec
        self._function: Callable[[str], object] = function
        self.expires_at = 0.0  # the last token's expiry, in seconds since the epoch
        self.failures = 0  # renewals that failed (librdkafka asks from one thread)
        self._fetch(config)  # a token now: a provider that cannot give one stops the command

    def __call__(self, config: str) -> Token:
        try:
            return self._fetch(config)
        except ConfigError as exc:  # librdkafka keeps the current token and asks again
            self.failures += 1
            LOG.warning("%s", exc)
            raise

    @property
    def expired(self) -> bool:
        """The client's token has run out: it cannot reach Kafka until a renewal works."""
        return time.time() >= self.expires_at

    def _fetch(self, config: str) -> Token:
        try:
            answer = self._function(config)
        except Exception as exc:
            raise ConfigError(f"{OPTION} {self.spec} raised {type(exc).__name__}: {exc}") from exc
        try:
            token = checked_token(answer, time.time())
        except ConfigError as exc:
            raise ConfigError(f"{OPTION} {self.spec}: {exc}") from None
        self.expires_at = float(token[1])
        return token


def checked_token(answer: object, now: float) -> Token:
    """``answer`` if librdkafka can use it as a token; else ``ConfigError`` saying why."""
    if not isinstance(answer, tuple) or len(answer) not in (2, 4):
        raise ConfigError(
            "expected (token, expiry) or (token, expiry, principal, extensions), "
            f"got {_shape(answer)}"
        )
    token, expiry = answer[:2]
    if not isinstance(token, str) or not token:
        raise ConfigError(f"the token must be a non-empty str, not {_shape(token)}")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        raise ConfigError(f"the expiry must be seconds since the epoch, not {_shape(expiry)}")
    if expiry <= now:
        raise ConfigError(f"the token expired {now - expiry:.0f} s ago")
    if expiry > now + 10 * _YEAR_S:  # MSK's signer gives milliseconds: an easy slip
        raise ConfigError(
            f"the expiry {expiry:.0f} is centuries away: milliseconds? oauth_cb returns "
            "seconds since the epoch"
        )
    if len(answer) == 4:
        principal, extensions = answer[2:]
        if not isinstance(principal, str):
            raise ConfigError(f"the principal must be a str, not {_shape(principal)}")
        if not isinstance(extensions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extensions.items()
        ):
            raise ConfigError("the extensions must be a dict of str to str")
    return answer


def token_provider(config: dict[str, Any]) -> TokenProvider | None:
    """The provider a client's config gives it, if any."""
    provider = config.get(OPTION)
    return provider if isinstance(provider, TokenProvider) else None


def with_token_provider(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` with an ``oauth_cb`` name replaced by the provider it names."""
    spec = properties.get(OPTION)
    if not isinstance(spec, str):
        return properties
    mechanism = next((properties[k] for k in _MECHANISM_KEYS if k in properties), None)
    if str(mechanism).upper() != "OAUTHBEARER":
        raise ConfigError(f"{OPTION} is used only with sasl.mechanism=OAUTHBEARER")
    return {**properties, OPTION: TokenProvider(spec, properties.get(_CONFIG, ""))}


def _shape(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"
