"""The pre-training stage of nnunet-cl: slices from nnUNet_preprocessed, augmented views, methods, engine."""
