"""The training engine: PyTorch model handling, token cache, batches, checkpoints, curves."""
