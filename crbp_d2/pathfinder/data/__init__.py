"""Pathfinder data: writing and reading generated datasets (:mod:`.storage`, numpy/OpenCV only,
so generation workers never import torch), the torch datasets and the C-RBP transform
(:mod:`.datasets`), and the generator's speed benchmark (:mod:`.benchmark`). The generator itself
is :mod:`crbp_d2.contours`."""
