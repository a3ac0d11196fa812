"""What the stages and the spine share: the method registry, the config schema and data splits, the job protocol,
sampling, log-probs and KL, the ground-truth scorer, the verdict's statistics.

Not a stage and not the spine: core imports neither (tests/test_layers.py); stages and the spine import it.
"""
