"""A served model without torch: the served folder's format, the reading rule for long texts, the onnxruntime
classifier, predict, the parity certificate and the settings that load it on a host. Training, export, quantize,
the gate, the registry and the HTTP service (tasks.serving) all build on it; it imports none of them."""
