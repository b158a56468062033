"""numpy arrays ⇄ the wire, for the model server and the clients alike.

One module per format, each read and written by the same functions on both ends, so
the server and the clients can never disagree about a byte:

* ``arrays``: the arrays every codec produces (strings are object arrays of ``bytes``)
  and the checks on a claimed shape, made before anything is allocated;
* ``raw``: row-major little-endian bytes, and length-prefixed elements for strings
  (TF's ``tensor_content``, V2's ``raw_*_contents`` and binary REST extension);
* ``jsonvalues``: JSON text and nested lists, with binary values as ``{"b64": ...}``;
* ``tfserving``: TF Serving's ``TensorProto``; ``tfserving_json``: its REST formats;
* ``v2``: KServe V2's datatypes and gRPC tensors; ``v2_json``: its REST tensors and
  the binary-tensor extension;
* ``protowire``: a message's ``repeated bytes`` field of tensor data written after the
  rest of it and read as views, where protobuf would copy it three times;
* ``numbers``: whole numbers written as text (versions, header lengths), ASCII digits only;
* ``errors``: ``EncodeError`` and ``DecodeError``, whose fault they are is for the
  caller to say (the server's client, or the client's server).

Nothing here imports the rest of streaminfer beyond its base errors and the generated
protobuf modules.
"""
