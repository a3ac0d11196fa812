"""A ladder of model sizes (imdb-scaling): the whole comparison of the protocol benchmark at each rung, then the
scaling stage across the rungs.

Each rung is a benchmark run of its own (every stage of pipelines/stages.py, skipped when finished) in
runs/<ladder benchmark>/<ladder>/<rung>/, with the rung's overrides of the protocol's base scale; the rungs share
the data, the evaluation prompts (the same seeded splits), the tokenizer (trained the same way from the same
reviews) and the ground truth (one folder, runs/<...>/<ladder>/ground_truth/). One wandb group holds the ladder;
each run's config names its rung. The scaling stage (`python -m scaling`) then reads every rung's report
(summary.json) and SFT model size into scaling.csv, scaling.png/pdf and scaling.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.tracking import job_tracking
from core.verdict import read_summary

from . import graph, store
from .config import Ladder

log = logging.getLogger("pipelines")

SCALING = graph.Stage("scaling", (), publish=("scaling.csv", "scaling.png", "scaling.pdf", "scaling.md"),
                      what="the comparison across the rungs: scaling.csv, scaling.png/pdf, scaling.md",
                      multiprocess=False)


def run(ladder: Ladder, force: bool = False, protocol: dict | None = None,
        launch: graph.Launch = graph.Launch(workers=1), source_id: str | None = None, root: Path | None = None
        ) -> Path:
    """Every rung in order (smallest first), then the scaling stage, in root (default: the ladder's run folder).
    Returns the ladder's folder."""
    root = root or store.run_root(ladder.benchmark, ladder.name)
    tracking = job_tracking(ladder.benchmark, ladder.name)  # one wandb group for the whole ladder
    shared = {"ground_truth": root / "ground_truth"}
    with store.RunLock(root) as lock:
        identities = {}
        first_rung, first = next(iter(ladder.rungs.items()))
        if force:  # the shared stages once (graph.run does not force them: each rung would replace them again)
            graph.run(first, list(shared), True, protocol, launch, source_id, root=root / first_rung,
                      tracking={**tracking, "rung": first_rung}, shared=shared)
        for k, (rung, cfg) in enumerate(ladder.rungs.items()):
            shape = f"{cfg.sft.n_layer} layers x {cfg.sft.n_embd} wide" if cfg.sft.model == "scratch" else cfg.sft.model
            log.info("rung %s (%d of %d): %s, in %s", rung, k + 1, len(ladder.rungs), shape, root / rung)
            graph.run(cfg, None, force, protocol, launch, source_id, root=root / rung,
                      tracking={**tracking, "rung": rung}, shared=shared)
            try:  # what the scaling stage reads of the rung: a summary of another format is made again
                read_summary(root / rung / "report" / "summary.json")
            except ValueError as e:
                log.warning("rung %s: %s; its report runs again", rung, e)
                graph.run(cfg, ["report"], True, protocol, launch, source_id, root=root / rung,
                          tracking={**tracking, "rung": rung}, shared=shared)
            identities[rung] = store.read_manifest(root / rung / "report")["identity"]
        config = {"rungs": list(ladder.rungs), "methods": first.methods, "report": first.section("report")}
        stage = graph.Stage(SCALING.name, (), needs=tuple(ladder.rungs), publish=SCALING.publish, what=SCALING.what,
                            multiprocess=False)
        graph.run_one(first, stage, config, identities, {rung: root / rung for rung in ladder.rungs}, root, force,
                      tracking, lock)
    return root
