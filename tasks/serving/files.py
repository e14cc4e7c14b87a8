"""File names of a served model folder (export writes them; quantize, gate and serving read them)."""

SERVING_FILE = "serving.json"  # model_file, max_length, labels, padding token
MODEL_FILE = "model.onnx"  # as exported (and, in a quantized folder, the chosen model)
OPTIMIZED_FILE = "model.optimized.onnx"  # after onnxruntime's offline graph optimisation
FP16_FILE = "model.fp16.onnx"  # for the CUDA execution provider
