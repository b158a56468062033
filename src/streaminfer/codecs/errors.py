"""What the codecs raise, without deciding whose fault it is::

    StreamInferError
    └── CodecError (also a ValueError)
        ├── EncodeError   an array the protocol has no type for
        └── DecodeError   bytes, values or a document that do not make the tensor they claim

The direction decides the blame.  The server answers a ``DecodeError`` in a request with
400 / INVALID_ARGUMENT.  A client turns an ``EncodeError`` into a record error (the
record holds a tensor the protocol cannot carry) and a ``DecodeError`` in an answer into
an infrastructure error (the server is broken, the record is not).
"""

from __future__ import annotations

from streaminfer.errors import StreamInferError


class CodecError(StreamInferError, ValueError):
    """An array and its wire form do not match."""


class EncodeError(CodecError):
    """The array has a dtype the protocol cannot carry."""


class DecodeError(CodecError):
    """The wire data is not a valid tensor: wrong size, unknown type, malformed document."""
