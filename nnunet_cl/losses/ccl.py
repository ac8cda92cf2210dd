"""SuperCL's connected-components labels (CCL, Zeng et al., eqs. 7-8) and the IGCP mask.

Rows are the ``V*B`` view-major embeddings of a batch (SuperCL: the ASP maps of both T_fix views).
Each row is linked to its most cosine-similar row of *another image*, the links are made undirected,
and the views of one image are always linked to each other (the reference code sets
``M[i, i+B] = M[i+B, i] = 1``; linking them *before* taking components makes the labels a partition,
so positives stay transitive). The connected components (scipy, weak connectivity) are the weak labels
of L_inter (IGCP): rows in one component are positives.

Choice: the reference code searches the neighbour among all ``2B`` rows except the row itself. Its two
T_fix views are pixel-aligned intensity variants, so a view's nearest row is nearly always its own
other view: on Hippocampus every batch of B images split into exactly B components (measured at
initialisation by ``scripts/bench_supercl.py``, and in the first epochs of a pre-training run), i.e.
IGCP degenerated to instance discrimination and added no inter-image positives. The paper's eq. 7 links
each of the B *samples* to its closest sample, so by default the image's own views are excluded
from the search (``exclude_own_views=False`` reproduces the reference code, via
``nnunet_cl.graph_labels``, which WCL shares). Ties go to the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from nnunet_cl.graph_labels import nearest_neighbours
from nnunet_cl.precision import float32_region
from nnunet_cl.masks import equal_label_mask, tile_views


def nearest_other_sample(embeddings: torch.Tensor, n_views: int = 2) -> torch.Tensor:
    """``[V*B, D] -> [V*B]``: each row's most cosine-similar row among the other samples' views."""
    samples = tile_views(torch.arange(embeddings.shape[0] // n_views, device=embeddings.device), n_views)
    with torch.no_grad(), float32_region(embeddings):     # a low-precision similarity can flip the argmax
        unit = F.normalize(embeddings.detach().float(), dim=-1)
        similarity = (unit @ unit.T).masked_fill(equal_label_mask(samples), float("-inf"))
        return similarity.argmax(dim=1)


def connected_component_labels(embeddings: torch.Tensor, n_views: int = 2,
                               exclude_own_views: bool = True) -> tuple[torch.Tensor, int]:
    """``[V*B, D]`` view-major rows -> (``[V*B]`` long component labels, number of components)."""
    n = embeddings.shape[0]
    if n % n_views:
        raise ValueError(f"{n} rows are not {n_views} views of equally many samples")
    if n < 2 or (exclude_own_views and n == n_views):
        labels = torch.zeros(n, dtype=torch.long, device=embeddings.device)
        return labels, int(n > 0)
    rows = np.arange(n)
    sample_rows = tile_views(torch.arange(n // n_views), n_views).numpy()   # view 0's row of each sample
    neighbours = nearest_other_sample(embeddings, n_views) if exclude_own_views else nearest_neighbours(embeddings)
    sources = np.concatenate([rows, rows])
    targets = np.concatenate([neighbours.cpu().numpy(), sample_rows])
    graph = coo_matrix((np.ones(2 * n, dtype=np.int8), (sources, targets)), shape=(n, n)).tocsr()
    count, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels.astype(np.int64)).to(embeddings.device), int(count)


def igcp_positive_mask(embeddings: torch.Tensor, n_views: int = 2,
                       exclude_own_views: bool = True) -> tuple[torch.Tensor, int]:
    """IGCP positives ``[V*B, V*B]`` (same CCL component; the kernel drops self-pairs) and the count."""
    labels, count = connected_component_labels(embeddings, n_views, exclude_own_views)
    return equal_label_mask(labels), count
