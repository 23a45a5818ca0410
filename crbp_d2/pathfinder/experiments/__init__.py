"""Recipes that train and evaluate several Pathfinder models and write their results: the CPU
protocol (:mod:`.cpu_protocol`), the check for a CUDA machine (:mod:`.cuda_check`) and the
generator's speed (:mod:`.generator_speed`)."""
