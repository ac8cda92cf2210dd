"""nnunet-cl: contrastive pre-training and label-limited fine-tuning for nnU-Net v2 (2D)."""

__version__ = "0.1.0"
