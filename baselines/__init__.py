"""Baseline methods (DPS, FreeDoM, SVDD, RBF, DAS, Psi-Sampler, Best-of-N, DNO) under the shared kernel."""
