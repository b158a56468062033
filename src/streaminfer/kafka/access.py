"""Kafka's "no" that no retry turns into "yes": refused logins, untrusted certificates, ACLs.

librdkafka treats these like any broker hiccup and retries them forever; a worker would
then sit in a silent loop of reconnects or aborted transactions.  They are the user's
settings, so they are configuration errors: the command stops with a one-line message.

* :func:`refuse_access_errors` is every client's ``error_cb`` (see
  :meth:`KafkaSettings.client_config`): a rejected SASL login or a failed TLS handshake
  raises from the client's next poll.  :class:`AccessErrors` keeps it for the caller
  to raise instead (the topic admin's connection check).
* :func:`refuse_denied` is for results and delivery reports: an error of a missing ACL
  (topic, group, transactional id, cluster) raises instead of being retried.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from streaminfer.errors import ConfigError

# A SASL login the broker rejected; a TLS handshake that failed (an untrusted CA, a name
# the certificate does not cover): the same settings fail the same way again.
ACCESS_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
# ... but for those of its errors that retrying does fix, which librdkafka tells apart only
# in words: an oauth_cb that failed to renew a token (the provider has logged why, and is
# asked again every 10 s); and a login whose connection broke, or a re-login (KIP-368)
# that reached the broker after the session it renews had ended (ILLEGAL_SASL_STATE),
# where librdkafka connects and logs in afresh.
_RETRIED = (
    "Failed to acquire SASL OAUTHBEARER token",
    "Request not valid in current SASL state",
    "Broker transport failure",
)
DENIED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def refuse_access_errors(error: KafkaError) -> None:
    """librdkafka's ``error_cb``: raise the errors retrying cannot fix; the rest it retries."""
    if _for_good(error):
        raise _refused(error)


class AccessErrors:
    """An ``error_cb`` that keeps the first error no retry fixes, for :meth:`check` to raise
    from plain Python: for a client that is polled only to look for one."""

    def __init__(self) -> None:
        self.first: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if self.first is None and _for_good(error):
            self.first = error

    def check(self) -> None:
        if self.first is not None:
            raise _refused(self.first)


def _for_good(error: KafkaError) -> bool:
    return error.code() in ACCESS_ERRORS and not any(text in error.str() for text in _RETRIED)


def _refused(error: KafkaError) -> ConfigError:
    return ConfigError(f"cannot connect to Kafka: {error.str()}")


def refuse_denied(error: KafkaError) -> None:
    """Raise if ``error`` says the client's user lacks an ACL."""
    if error.code() in DENIED:
        raise ConfigError(
            f"Kafka denied access ({error.name()}): {error.str().rstrip('.')}; "
            "grant the client's user the ACL it needs"
        )
