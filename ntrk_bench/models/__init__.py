"""Models behind the FlowModel protocol."""
from .gmm import GaussianMixtureFlow
from .protocol import CountingModel, FlowModel, NFECounter, counted

__all__ = ["CountingModel", "FlowModel", "GaussianMixtureFlow", "NFECounter", "counted"]
