"""The JSON responses both REST APIs answer with, errors included (``{"error": ...}``)."""

from __future__ import annotations

from aiohttp import web

from streaminfer.codecs.jsonvalues import JSON, dumps


def json_response(document: JSON, status: int = 200) -> web.Response:
    return web.Response(body=dumps(document), status=status, content_type="application/json")
