"""What several stages share: the job protocol, sampling, log-probs and KL, the ground-truth scorer.

Not a stage and not the spine: stages import it; the spine imports only core.tracking (the wandb mode).
"""
