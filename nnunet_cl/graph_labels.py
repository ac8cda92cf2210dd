"""Weak labels from a 1-nearest-neighbour graph (WCL, Zheng et al. 2021; SuperCL's CCL).

Every sample is linked to its most cosine-similar *other* sample; the links are made undirected and
the connected components of that graph are the weak labels (samples in one component are positives).
Because every node has at least one edge, every component has >= 2 members, so every anchor gets a
positive.

Choices: self-similarity is excluded with ``-inf`` (WCL subtracts 2 on the diagonal, which for cosine
similarities in [-1, 1] can tie with an exactly opposite vector); ties between neighbours go to the
lowest index (``argmax``); the components are scipy's ``connected_components(directed=False)`` (weak
connectivity, what SuperCL's ``directed=True`` call with ``connection='weak'`` also computes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from nnunet_cl.precision import float32_region


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """``[N, D] -> [N]``: index of each row's most cosine-similar other row (no gradient)."""
    with torch.no_grad(), float32_region(embeddings):     # a low-precision similarity can flip the argmax
        unit = F.normalize(embeddings.detach().float(), dim=-1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(float("-inf"))
        return similarity.argmax(dim=1)


def nearest_neighbour_components(embeddings: torch.Tensor) -> torch.Tensor:
    """``[N, D] -> [N]`` long labels (on the embeddings' device): connected components of the
    symmetrised 1-nearest-neighbour graph of the rows (cosine similarity)."""
    n = embeddings.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=embeddings.device)
    neighbours = nearest_neighbours(embeddings).cpu().numpy()
    rows = np.arange(n)
    graph = coo_matrix((np.ones(n, dtype=np.int8), (rows, neighbours)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels.astype(np.int64)).to(embeddings.device)
