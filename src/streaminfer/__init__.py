"""streaminfer: real-time model inference on Apache Kafka streams."""

__version__ = "0.1.0"
