"""Generation entry point: `python run.py method=ntrk steps=25 ...` (Hydra; configs in ntrk_bench/conf)."""
from ntrk_bench.cli import main

if __name__ == "__main__":
    main()
