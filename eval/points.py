"""Eval's points kept between runs: a point whose inputs did not change since the last evaluation is reused, so
rerunning one method stage re-evaluates its checkpoints only."""

import hashlib
import json
from pathlib import Path

from core import dist
from core.runcache import code_digest


class PointCache:
    """Points of earlier evaluations, reused when nothing they depend on changed: the same checkpoint weights,
    the same SFT reference, tokenizer and ground truth, the same eval config, data config and seed, the same
    code (the eval package, all of core/, the libraries' versions: core.runcache.code_digest, so code moved between
    modules still invalidates them). The last
    finished eval folder's points/<key>.json are read; every point of this evaluation is written to this
    one's, so a rerun after one method stage changed evaluates that stage's checkpoints only."""

    def __init__(self, job):
        self.old = job.out.parent / job.stage / "points"  # the finished eval this run replaces
        self.new = job.out / "points"
        self.new.mkdir(exist_ok=True)
        # what is there now (new: a resumed evaluation's own points): every process sees the same files, so all
        # skip a point together; a point written later in this run (a twin checkpoint) is evaluated again
        self.known = {p.stem: p for folder in (self.old, self.new) if folder.is_dir() for p in folder.glob("*.json")}
        self.base = hashlib.sha256(json.dumps([job.config, job.seed], sort_keys=True).encode())
        self.base.update(code_digest(__file__).encode())
        _hash_model_files(self.base, job.inputs["ground_truth"])
        for seed in range(job.seeds):  # the proxy's scorer: each seed's reward model (one unless reseed_shared)
            _hash_model_files(self.base, job.upstream("reward_model", seed))
        self.references: dict[Path, bytes] = {}  # each SFT reference's files, hashed once

    def key(self, checkpoint, reference: Path) -> str:
        """The point of `checkpoint` (None: the SFT model itself) measured against `reference`."""
        if reference not in self.references:
            self.references[reference] = _hash_model_files(hashlib.sha256(), reference).digest()
        h = self.base.copy()
        h.update(self.references[reference])
        if checkpoint is not None:
            _hash_model_files(h, checkpoint)
        return h.hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        if key not in self.known:
            return None
        try:
            hit = json.loads(self.known[key].read_text())
            return hit if all(isinstance(hit.get(k), list)
                              for k in ("reward", "proxy_reward", "kl", "kl_mc", "length", "texts")) else None
        except (OSError, ValueError, AttributeError):  # damaged: evaluate again
            return None

    def put(self, key: str, result: dict) -> None:
        if not dist.is_main():
            return
        tmp = self.new / f".{key}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(self.new / f"{key}.json")


def _hash_model_files(h, folder):
    """Add what defines a model or scorer folder to h: its weights, config, tokenizer (not its logs). -> h."""
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    names += [n for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "scorer.json", "reward.json")
              if (folder / n).is_file()]
    for name in names:
        h.update(name.encode())
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h
