"""Callbacks: what watches training without changing it (throughput, pictures, later online probes)."""
