"""The descriptor pool of streaminfer's messages, apart from protobuf's default pool.

Other packages register files of the same names there (``inference.*``, ``tensorflow.*``:
see ``build.py``).  Our files import protobuf's ``Any`` and wrappers, so those are added
here first.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
