"""The whitening operator of NTRK (paper Sec. 4 and App. B)."""
from .bounds import two_level_bounds
from .domains import Domain, make_domain
from .operator import BlockConfig, Whitening, WhiteningConfig
from .project import project_2os, project_block_norms, project_norm, project_tile_stats

__all__ = ["BlockConfig", "Domain", "Whitening", "WhiteningConfig", "make_domain", "project_2os",
           "project_block_norms", "project_norm", "project_tile_stats", "two_level_bounds"]
