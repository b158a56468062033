"""One pooled HTTP client per remote predictor, and HTTP statuses mapped to the two errors.

404 is a record's fault (no such model or version), 400 and 413 too (bad input, too
large).  500 and 422 from a server that answers are one request's failure
(``RequestFailed``: the worker finds the record and dead-letters it if it keeps failing);
429, 502-504, timeouts and connection failures are the infrastructure's.

An answer is read as it arrives, up to ``max_answer_bytes``: httpx would hold all of it
first (a 1 GB answer took a worker to 2.2 GB, a chunked one that never ended without
limit).  The whole exchange, headers and body, ends within the request's timeout:
httpx bounds each read only, so a server that sent a byte every half second held a
request for as long as it went on.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import dumps, loads, loads_tensors
from streaminfer.codecs.numbers import ascii_int
from streaminfer.errors import InfrastructureError, RequestFailed, bounded
from streaminfer.http_deadline import DeadlineBackend, deadline
from streaminfer.models.errors import ModelNotFound
from streaminfer.predictors.remote import AnswerTooLarge, RemoteOptions, ServerRejected

ERROR_BODY_BYTES = 64 * 1024  # of an error's body, read for its explanation
# Of that explanation, logged at each retry and kept in dead letters: its start and end,
# as a server's reason may come last (Triton's, after a traceback).
ERROR_TEXT_BYTES = 1000


@dataclass(frozen=True)
class Answer:
    """A 200 response, its body read whole."""

    headers: httpx.Headers
    content: bytes


class HttpTransport:
    """A keep-alive connection pool to one server; thread-safe, like ``httpx.Client``."""

    def __init__(self, target: str, options: RemoteOptions) -> None:
        scheme = "https" if options.tls else "http"
        # Encoded answers are not asked for: decoding them would cost the worker's CPU.
        headers = {"user-agent": "streaminfer", "accept-encoding": "identity"}
        if options.token:
            headers["authorization"] = f"Bearer {options.token}"
        verify: ssl.SSLContext | bool = True  # only consulted for https
        if options.tls:
            verify = ssl.create_default_context(cafile=options.ca_file)
        self.base_url = f"{scheme}://{target}"
        self.max_answer_bytes = options.max_answer_bytes
        self.timeout_s = options.timeout_s
        limits = httpx.Limits(
            max_connections=options.max_concurrency,
            max_keepalive_connections=options.max_concurrency,
        )
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s),
            transport=_DeadlineTransport(verify, limits),
            # A proxy from the environment must not sit between us and the server.
            trust_env=False,
        )

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> Answer:
        """POST and return a 200 response; any other outcome raises the matching error."""
        return self._send("POST", path, content, headers)

    def get(self, path: str) -> Answer:
        """GET and return a 200 response; any other outcome raises the matching error."""
        return self._send("GET", path, b"", {})

    def get_json(self, path: str) -> dict[str, Any]:
        return parse_json(self.get(path).content, self.base_url + path)

    def _send(self, method: str, path: str, content: bytes, headers: dict[str, str]) -> Answer:
        url = self.base_url + path
        try:
            with (
                deadline(self.timeout_s),
                self._client.stream(method, path, content=content, headers=headers) as response,
            ):
                # Decoded: a server may compress all the same, and the limit counts what is kept.
                chunks = response.iter_bytes()
                if response.status_code == 200:
                    return Answer(response.headers, self._read(response, chunks, url))
                explanation = _error_text(_start_of(chunks))
        except httpx.TimeoutException as exc:
            raise InfrastructureError(f"{url}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"{url}: {type(exc).__name__}: {exc}") from exc
        message = f"{url}: {response.status_code} {explanation}"
        if response.status_code == 404:
            raise ModelNotFound(message)
        if response.status_code in (400, 413):
            raise ServerRejected(message)
        if response.status_code in (500, 422):
            raise RequestFailed(message)
        raise InfrastructureError(message)

    def _read(self, response: httpx.Response, chunks: Iterator[bytes], url: str) -> bytes:
        """The body, refused as soon as it is known to pass ``max_answer_bytes``: by its
        declared length before any of it is read, else as it arrives."""
        most = self.max_answer_bytes
        declared = ascii_int(response.headers.get("content-length", ""))
        if declared is not None and declared > most:
            raise AnswerTooLarge(f"{url}: the answer of {declared} bytes is larger than {most}")
        body, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > most:
                raise AnswerTooLarge(f"{url}: the answer is larger than {most} bytes")
            body.append(chunk)
        return b"".join(body)

    def post_json(self, path: str, body: dict[str, Any]) -> Answer:
        return self.post(path, dumps(body), {"content-type": "application/json"})

    def close(self) -> None:
        self._client.close()


def parse_json(content: bytes, where: str, tensors: bool = False) -> dict[str, Any]:
    """A JSON object from the server; anything else means the server is broken.  With
    ``tensors``, its lists of floats are read straight into arrays (``loads_tensors``)."""
    try:
        body = (loads_tensors if tensors else loads)(content)
    except DecodeError as exc:
        raise InfrastructureError(f"{where}: the answer is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InfrastructureError(f"{where}: the answer is not a JSON object")
    return body


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over connections bounded by the exchange's deadline
    (``streaminfer.http_deadline``).  Its own pool is replaced, as httpx takes no network
    backend; the rest of the transport uses nothing else."""

    def __init__(self, verify: ssl.SSLContext | bool, limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )


def _start_of(chunks: Iterator[bytes]) -> bytes:
    """The first ``ERROR_BODY_BYTES`` of an error's body, where its explanation is; the
    rest is left unread (the connection is closed with it)."""
    start = b""
    for chunk in chunks:
        start += chunk
        if len(start) >= ERROR_BODY_BYTES:
            break
    return start[:ERROR_BODY_BYTES]


def _error_text(content: bytes) -> str:
    """The server's own explanation: TF Serving and KServe both use ``{"error": ...}``."""
    text = content.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # json raises RecursionError past ~1,000 levels
        return bounded(text, ERROR_TEXT_BYTES)
    if isinstance(body, dict) and "error" in body:
        return bounded(str(body["error"]), ERROR_TEXT_BYTES)
    return bounded(text, ERROR_TEXT_BYTES)
