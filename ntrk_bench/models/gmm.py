"""An exact Gaussian-mixture flow: closed-form velocity, posterior mean and marginal density.

Data law p0 = sum_k pi_k N(mu_k, diag(tau_k^2)). Along the linear path x_t = (1 - t) x0 + t eps every
marginal is again a mixture, p_t = sum_k pi_k N(a mu_k, diag(a^2 tau_k^2 + t^2)) with a = 1 - t, so

    E[x0 | x_t, k] = mu_k + a tau_k^2 / (a^2 tau_k^2 + t^2) (x_t - a mu_k),
    E[x0 | x_t]    = sum_k w_k(x_t) E[x0 | x_t, k],   w_k = posterior component weights,
    v(x_t, t)      = E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t.

Prompts select components by label ("a handwritten 3" -> components labelled "3"); an empty or
unknown prompt keeps the whole mixture.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..fields import smooth_field


class GaussianMixtureFlow:
    device = torch.device("cpu")  # the sampler state's device and dtype (closed forms run in float64)
    dtype = torch.float32

    def __init__(self, means: torch.Tensor, variances: torch.Tensor | float, weights: torch.Tensor | None = None,
                 labels: Sequence[str] | None = None, decoder: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.means = means.float()  # (K, *latent_shape)
        k = self.means.shape[0]
        self.latent_shape = tuple(self.means.shape[1:])
        var = torch.as_tensor(variances, dtype=torch.float32)  # scalar, per component (K,), or full
        if var.dim() == 1 and var.shape[0] == k:
            var = var.reshape(k, *([1] * len(self.latent_shape)))
        self.variances = var.expand_as(self.means).clone()
        w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.log_weights = torch.log(w / w.sum())
        self.labels = list(labels) if labels is not None else None
        self.decoder = decoder

    # ------------------------------------------------------------------ conditioning
    def condition(self, prompts: Sequence[str] | None) -> torch.Tensor:
        """Per-prompt log mixture weights (B, K); a prompt naming a label keeps only its components."""
        prompts = list(prompts or [""])
        rows = []
        for p in prompts:
            lw = self.log_weights.clone()
            if self.labels is not None:
                hit = torch.tensor([_names(p, lab) for lab in self.labels])
                if hit.any():
                    lw = torch.where(hit, lw, torch.full_like(lw, -math.inf))
                    lw = lw - torch.logsumexp(lw, 0)
            rows.append(lw)
        return torch.stack(rows)

    def _cond(self, cond, b: int, device) -> torch.Tensor:
        lw = self.log_weights[None] if cond is None else cond
        return lw.to(device).expand(b, -1) if lw.shape[0] == 1 else lw.to(device)

    # ------------------------------------------------------------------ closed forms
    def _posterior(self, x: torch.Tensor, t: torch.Tensor, cond, need_x0: bool = True):
        """Log joint (B, K) of component and x_t, and E[x0 | x_t] (B, D), in float64.

        Quadratic forms are expanded into matrix products, so memory stays O(B K + K D) rather than
        O(B K D); samples sharing a time share the products (in sampling, all of them).
        """
        b = x.shape[0]
        xf = x.reshape(b, -1).double()
        lw = self._cond(cond, b, x.device).double()
        mu = self.means.reshape(self.means.shape[0], -1).to(x.device, torch.float64)
        tau2 = self.variances.reshape(mu.shape).to(x.device, torch.float64)
        log_joint = xf.new_empty(b, mu.shape[0])
        x0 = torch.empty_like(xf) if need_x0 else None
        t = t.reshape(-1).expand(b).double()
        for tv in torch.unique(t):
            idx = t == tv
            a, tt = 1 - tv, tv
            var = a * a * tau2 + tt * tt
            inv = 1 / var
            xb = xf[idx]
            quad = (xb * xb) @ inv.T - 2 * a * (xb @ (mu * inv).T) + a * a * (mu * mu * inv).sum(1)
            lj = lw[idx] - 0.5 * (quad + torch.log(2 * math.pi * var).sum(1))
            log_joint[idx] = lj
            if need_x0:
                w = torch.softmax(lj, dim=-1)
                gain = a * tau2 * inv  # E[x0 | x_t, k] = mu_k (1 - a gain_k) + gain_k x_t
                x0[idx] = w @ (mu * (1 - a * gain)) + xb * (w @ gain)
        return log_joint, x0

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """E[x0 | x_t] in closed form."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return self._posterior(x, t, cond)[1].reshape(x.shape).to(x.dtype)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        x0 = self.posterior_mean(x, t, cond)
        return (x - x0) / t.reshape(-1, *([1] * (x.dim() - 1)))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond=None) -> torch.Tensor:
        """Exact log density of the marginal p_t at x (t = 0 is the data law)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return torch.logsumexp(self._posterior(x, t, cond, need_x0=False)[0], dim=-1).to(x.dtype if x.is_floating_point() else torch.float32)

    def component_posterior(self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond=None) -> torch.Tensor:
        """Posterior component probabilities (B, K) at x under p_t."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return torch.softmax(self._posterior(x, t, cond, need_x0=False)[0], dim=-1).float()

    def sample_data(self, n: int, generator: torch.Generator | None = None, cond=None) -> torch.Tensor:
        """Exact draws from p0 (for reference statistics)."""
        lw = self._cond(cond, n, "cpu")
        k = torch.multinomial(lw.exp(), 1, generator=generator).squeeze(-1)
        eps = torch.randn(n, *self.latent_shape, generator=generator)
        return self.means[k] + self.variances[k].sqrt() * eps

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 if self.decoder is None else self.decoder(x0)


def _names(prompt: str, label: str) -> bool:
    """Whether a prompt names a label as a whole word (``"a handwritten 3"`` names ``"3"``)."""
    return label in prompt.replace(",", " ").replace(".", " ").split()


def smooth_mixture(latent_shape, components: int = 4, component_std: float = 0.3, seed: int = 0,
                   labels: Sequence[str] | None = None) -> GaussianMixtureFlow:
    """A mixture whose component means are smooth random fields of unit RMS (an image-like toy data law)."""
    means = smooth_field((components, *latent_shape), seed)
    return GaussianMixtureFlow(means, component_std ** 2, labels=labels)
