"""Monitoring: live traffic (the prediction log, labelled batches) against the prod version's training data."""
