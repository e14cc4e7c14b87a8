"""Serving a shipped ONNX folder with onnxruntime + tokenizers (no torch)."""
