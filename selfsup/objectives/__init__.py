"""Pretext objectives: each takes a backbone and a batch and returns a loss and metrics."""
