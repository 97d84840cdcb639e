"""The exact tier (``model=mini_exact``): a Gaussian mixture over digit latents with closed-form velocity.

Each class's latents (splits A + B) are clustered with k-means; every cluster becomes a component with
its centroid as mean and its per-dimension spread (floored) as diagonal variance, weighted by its size and
labelled with its digit, so a prompt naming a digit selects that digit's components. The mixture's exact
log-density is the exact tier's ground-truth quality measure.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..models.gmm import GaussianMixtureFlow
from . import data


@lru_cache(maxsize=4)
def exact_mixture(clusters_per_class: int = 16, min_std: float = 0.05, seed: int = 0) -> GaussianMixtureFlow:
    from sklearn.cluster import KMeans

    images, labels = data.subset("AB")
    z = data.encode(images).flatten(1).double().numpy()
    means, variances, weights, names = [], [], [], []
    for c in range(10):
        zc = z[labels.numpy() == c]
        km = KMeans(n_clusters=clusters_per_class, n_init=4, random_state=seed).fit(zc)
        for k in range(clusters_per_class):
            members = zc[km.labels_ == k]
            means.append(torch.from_numpy(km.cluster_centers_[k]))
            spread = torch.from_numpy(members.var(0)) if len(members) > 1 else torch.zeros(z.shape[1], dtype=torch.float64)
            variances.append(spread.clamp_min(min_std ** 2))
            weights.append(len(members))
            names.append(data.CLASSES[c])
    shape = (len(means), *data.LATENT)
    model = GaussianMixtureFlow(torch.stack(means).reshape(shape).float(), torch.stack(variances).reshape(shape).float(),
                                torch.tensor(weights, dtype=torch.float32), labels=names, decoder=data.decode)
    return model
