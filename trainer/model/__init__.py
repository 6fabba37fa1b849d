"""Policy-value networks and their ONNX publication."""
