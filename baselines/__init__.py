"""Baseline methods under one interface (``method(problem) -> Result``), sharing the core kernel.

Best-of-N and the dagger variants are the ``particles`` option of single-trajectory methods
(``ntrk_bench.methods.Chain``), not separate implementations.
"""
from ntrk_bench.methods import base, meanshift, ntrk

from .das import DAS
from .dno import DNO
from .dps import dps
from .freedom import FreeDoM
from .psi import PsiSampler
from .rbf import RBF
from .svdd import SVDD

METHODS = {"base": base, "bon": base, "ntrk": ntrk, "dps": dps, "freedom": FreeDoM, "svdd": SVDD, "das": DAS,
           "psi": PsiSampler, "rbf": RBF, "dno": DNO, "meanshift": meanshift}


def build_method(name: str, **params):
    """A method by its configuration name; raises a one-line error for unknown names."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**params)


__all__ = ["DAS", "DNO", "METHODS", "PsiSampler", "RBF", "SVDD", "FreeDoM", "base", "build_method", "dps", "meanshift", "ntrk"]
