"""Self-play trainer: learns from a live replay DB and publishes ONNX models."""

__version__ = "0.1.0"
