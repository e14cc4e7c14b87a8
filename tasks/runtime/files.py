"""File names of a served model folder (export writes them; quantize, gate and serving read them), and how
serving batches texts."""

SERVING_FILE = "serving.json"  # model_file, max_length, labels, padding token
MODEL_FILE = "model.onnx"  # as exported (and, in a quantized folder, the chosen model)
OPTIMIZED_FILE = "model.optimized.onnx"  # after onnxruntime's offline graph optimisation
FP16_FILE = "model.fp16.onnx"  # for the CUDA execution provider
# A gate's release folder (artifacts/gate/release): the served files plus what the gate judged.
RELEASE_FILE = "release.json"  # the model's hash, its training run and the gate's decision
TEST_ROWS_FILE = "test_rows.json"  # keys of the test rows it was judged on (a later gate compares on the shared ones)
PARITY_FILE = "parity.json"  # the parity certificate: test texts scored one per call on the judging host

# Texts per model call of `tunegate predict` unless --batch-size says otherwise (the gate reports how far its
# labels agree with labels computed one text at a time).
PREDICT_BATCH_SIZE = 32

