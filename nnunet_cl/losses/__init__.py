"""Contrastive losses. One shared kernel (``info_nce``); methods only decide which pairs are positive."""

from nnunet_cl.losses.info_nce import MultiPositiveInfoNCE, multi_positive_info_nce

__all__ = ["MultiPositiveInfoNCE", "multi_positive_info_nce"]
