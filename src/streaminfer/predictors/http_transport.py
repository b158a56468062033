"""One pooled HTTP client per remote predictor, and HTTP statuses mapped to the two errors.

404 is a record's fault (no such model or version), 400 and 413 too (bad input, too
large).  500 and 422 from a server that answers are one request's failure
(``RequestFailed``: the worker finds the record and dead-letters it if it keeps failing);
429, 502-504, timeouts and connection failures are the infrastructure's.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import dumps, loads, loads_tensors
from streaminfer.errors import InfrastructureError, RequestFailed
from streaminfer.models.errors import ModelNotFound
from streaminfer.predictors.remote import RemoteOptions, ServerRejected


class HttpTransport:
    """A keep-alive connection pool to one server; thread-safe, like ``httpx.Client``."""

    def __init__(self, target: str, options: RemoteOptions) -> None:
        scheme = "https" if options.tls else "http"
        headers = {"user-agent": "streaminfer"}
        if options.token:
            headers["authorization"] = f"Bearer {options.token}"
        verify: ssl.SSLContext | bool = True  # only consulted for https
        if options.tls:
            verify = ssl.create_default_context(cafile=options.ca_file)
        self.base_url = f"{scheme}://{target}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s),
            limits=httpx.Limits(
                max_connections=options.max_concurrency,
                max_keepalive_connections=options.max_concurrency,
            ),
            verify=verify,
            trust_env=False,  # a proxy from the environment must not sit between us and the server
        )

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST and return a 200 response; any other outcome raises the matching error."""
        return self._send("POST", path, content, headers)

    def get(self, path: str) -> httpx.Response:
        """GET and return a 200 response; any other outcome raises the matching error."""
        return self._send("GET", path, b"", {})

    def get_json(self, path: str) -> dict[str, Any]:
        return parse_json(self.get(path).content, self.base_url + path)

    def _send(
        self, method: str, path: str, content: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        url = self.base_url + path
        try:
            response = self._client.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise InfrastructureError(f"{url}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            return response
        message = f"{url}: {response.status_code} {_error_text(response)}"
        if response.status_code == 404:
            raise ModelNotFound(message)
        if response.status_code in (400, 413):
            raise ServerRejected(message)
        if response.status_code in (500, 422):
            raise RequestFailed(message)
        raise InfrastructureError(message)

    def post_json(self, path: str, body: dict[str, Any]) -> httpx.Response:
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


def _error_text(response: httpx.Response) -> str:
    """The server's own explanation: TF Serving and KServe both use ``{"error": ...}``."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text[:500]
