"""Scoring and analysing Pathfinder models: the metrics (:mod:`.metrics`), running a model over
test images at several step counts (:mod:`.evaluator`), the non-learned baselines
(:mod:`.baselines`), the paper's analyses (:mod:`.analysis`), their figures (:mod:`.plots`) and
the work of the analysis commands (:mod:`.reports`)."""
