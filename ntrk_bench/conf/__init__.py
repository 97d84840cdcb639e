"""The Hydra configuration of ntrk-bench (a package so that Hydra and importlib can find it when installed)."""
