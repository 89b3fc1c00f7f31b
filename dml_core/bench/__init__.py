"""The benchmark: dml_core's training path against a pytorch-metric-learning loop, one process."""
