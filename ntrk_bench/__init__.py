"""ntrk-bench: a benchmark harness for inference-time reward alignment built around NTRK."""
