"""The data source, checked by the spine before any stage runs (core/data.py reads it; the stages split it).

A local source is read line by line once: every line or file readable, both labels, enough reviews for the splits;
what passed is remembered in RUN_DIR/.cache (store.HashCache) with the source's content, so an edited file is
checked, and its stages rerun, again.
"""

from __future__ import annotations

import dataclasses
import hashlib

from core.config import ConfigError, stable_hash
from core.data import check_source, make_splits, parse_source, prompt_reviews, source_files

from . import store


def identity(source: str, cache) -> str | None:
    """A file source's content (every file's sha256 through store.HashCache), so that a file edited in place
    reruns the stages that read it; None for a package or hub source (its name is its identity)."""
    files = source_files(source)
    if not files:
        return None
    return hashlib.sha256("".join(f"{p}\0{cache.sha256(p)}\n" for p in files).encode()).hexdigest()[:16]


def check(cfg) -> str | None:
    """Everything the stages will ask of a local source, before any of them runs: every line or file readable
    (a bad one is a ConfigError naming it), both labels, and enough reviews for the splits, the pair prompts,
    SFT and the ground truth (cfg: the BenchmarkConfig). A hub source is checked by its stages.
    Returns the source's identity. A source and settings that passed before (same content) are not read again."""
    check_source(cfg.data.source)
    if parse_source(cfg.data.source)[0] == "hf":
        return None
    cache = store.HashCache()
    source_id = identity(cfg.data.source, cache)
    key = "checked:" + stable_hash([source_id or cfg.data.source, dataclasses.asdict(cfg.data), cfg.seed,
                                    cfg.pairs.prompts, cfg.sft.reviews, cfg.ground_truth.train_reviews])
    if key not in cache.entries:
        _check_counts(cfg)
        cache.entries[key], cache.changed = True, True
    cache.save()  # only once the source has passed: bad input writes nothing
    return source_id


def _check_counts(cfg) -> None:
    splits = make_splits(cfg.data, cfg.seed)
    long_enough = len(prompt_reviews(splits.train, cfg.data))
    for key, wanted, have, what in (
        ("pairs.prompts", cfg.pairs.prompts, long_enough,
         f"training reviews longer than data.min_review_chars ({cfg.data.min_review_chars})"),
        ("sft.reviews", cfg.sft.reviews, len(splits.train), "training reviews"),
        ("ground_truth.train_reviews", cfg.ground_truth.train_reviews, len(splits.train), "training reviews"),
    ):
        if wanted > have:
            raise ConfigError(f"{key} = {wanted} but {cfg.data.source} has {have} {what} (after the held-out "
                              f"reviews); allowed at most {have}")
