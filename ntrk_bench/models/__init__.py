"""Models behind the FlowModel protocol."""
from .gmm import GaussianMixtureFlow, smooth_mixture
from .protocol import CountingModel, FlowModel, NFECounter, counted

__all__ = ["CountingModel", "FlowModel", "GaussianMixtureFlow", "NFECounter", "counted", "smooth_mixture"]
