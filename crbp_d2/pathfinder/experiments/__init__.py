"""Recipes that train and evaluate several Pathfinder models and write their results: the CPU
protocol (:mod:`.cpu_protocol`) and the check for a CUDA machine (:mod:`.cuda_check`)."""
