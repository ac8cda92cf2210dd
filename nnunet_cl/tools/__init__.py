"""The tools floor: the ``nnunet_cl`` console script and what it runs (benchmark, speed, superpixel
views). Tools import the trainers, the pre-training and the core; nothing below imports a tool."""
