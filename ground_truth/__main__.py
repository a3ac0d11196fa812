"""Stage ground_truth: the sentiment scorer whose P(positive) is every method's true reward.

tiny: TF-IDF (word 1-2 grams) + logistic regression fit on labelled training reviews.
paper: the siebert/sentiment-roberta-large-english classifier, referenced by name.
The manifest records accuracy on held-out labelled reviews, on full texts and on their first
`prefix_words` words (about what a prompt + completion holds).
"""

import logging
import time

import numpy as np

from core import job as jobs
from core import tracking
from core.scorer import TfidfLogRegScorer, load_scorer, save_hf_reference
from core.data import make_splits

log = logging.getLogger("stage")


def accuracy(p_positive: np.ndarray, labels: list[int]) -> float:
    return float(np.mean((p_positive > 0.5) == np.asarray(labels, dtype=bool)))


def main():
    job = jobs.start()
    run = tracking.start(job)
    cfg, data_cfg = job.section("ground_truth"), job.section("data")
    splits = make_splits(data_cfg, job.seed)
    t0 = time.time()
    if cfg.kind == "tfidf-logreg":
        train = splits.train[: cfg.train_reviews or None]
        log.info("fitting TF-IDF + logistic regression on %d labelled reviews", len(train))
        TfidfLogRegScorer.fit([r.text for r in train], [r.label for r in train], cfg.C, job.seed).save(job.out)
        n_train = len(train)
    else:
        save_hf_reference(job.out, cfg.model, cfg.batch_size, cfg.max_length)
        n_train = 0
    scorer = load_scorer(job.out)  # score through the saved artifact, exactly as later stages will
    held = splits.gt_heldout
    labels = [r.label for r in held]
    full = accuracy(scorer([r.text for r in held]), labels)
    prefix = accuracy(scorer([" ".join(r.text.split()[: cfg.prefix_words]) for r in held]), labels)
    log.info("held-out accuracy %.3f on full reviews, %.3f on their first %d words", full, prefix, cfg.prefix_words)
    jobs.finish(job, {"heldout_accuracy": full, "heldout_accuracy_prefix": prefix, "n_train": n_train,
                      "n_heldout": len(held), "fit_seconds": round(time.time() - t0, 2)}, run)


if __name__ == "__main__":
    jobs.run(main)
