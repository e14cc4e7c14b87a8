"""Model compression: a smaller student built from the fine-tuned teacher by structured pruning."""
