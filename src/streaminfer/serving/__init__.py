"""The model server: TF Serving and KServe V2 APIs, REST and gRPC, over the model repository."""

from streaminfer.serving.dataplane import DataPlane, ModelHandle
from streaminfer.serving.server import ModelServer
from streaminfer.serving.settings import ServerSettings

__all__ = ["DataPlane", "ModelHandle", "ModelServer", "ServerSettings"]
