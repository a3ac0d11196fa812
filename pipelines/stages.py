"""The stage table: what each stage reads, needs and publishes, and the config its job holds.

Each stage is a folder with a `python -m <module> <job.json>` command; the spine (pipelines/graph.py) never imports
one. The shared stages are listed here; the method stages are made from the registry (core/methods.py): one per
method `stage`, wired by its module's kind (WIRING). The process count is not part of a stage's config: N processes
compute what one does (core/dist.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from core.config import SECTIONS, BenchmarkConfig, note_fields
from core.methods import METHODS, Method
from core.methods import stages as method_stages


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads (its config hash covers exactly these)
    needs: tuple[str, ...] = ()  # upstream stages whose folders it reads
    publish: tuple[str, ...] = ()  # files copied to runs/<benchmark>/<scale>/ when it finishes
    what: str = ""
    module: str = ""  # the command is `python -m <module>` (default: the stage's name)
    multiprocess: bool = True  # runs under `accelerate launch` when several processes are asked for
    split: tuple[str, ...] = ()  # config keys (section.key) whose batches are split evenly over the processes
    seeded: bool = False  # a method stage: trains every run once per training seed (its config holds `seeds`)
    revision: int = 0  # raised when a fix changes what the stage computes: its finished folders are then stale


# A method stage by its module's kind (core.methods.KINDS): the sections it reads ("{}": its own), the stages it needs,
# the batches split over its processes, its revision. In the order ready stages start: PPO, the longest chain, and
# the online methods before DPO and its relatives, so that the slowest stages do not start last.
WIRING = {
    "ppo": dict(sections=("data", "{}", "ground_truth", "train"), needs=("sft", "ground_truth", "pairs", "reward_model"),
                split=("{}.rollouts_per_step", "{}.minibatch_size")),
    # revision 1: left-padded rows scored at their own positions (lm.positions_from_mask)
    "online": dict(sections=("data", "{}", "ground_truth", "train"),
                   needs=("sft", "ground_truth", "pairs", "reward_model"), split=("{}.prompts_per_step",), revision=1),
    "pairs": dict(sections=("{}", "train"), needs=("sft", "pairs"), split=("{}.batch_size",)),
    "best_of_n": dict(sections=("data", "eval", "{}", "ground_truth"), needs=("sft", "ground_truth", "reward_model")),
}


def method_stage(name: str, methods: list[Method]) -> Stage:
    """The stage that trains `methods` (one registry stage), wired by its module's kind."""
    first, wiring = methods[0], WIRING[methods[0].kind]
    what = (f"{' and '.join(f'{m.label} ({m.name})' for m in methods)} from the "
            f"{' and '.join(dict.fromkeys(m.learns_from for m in methods))}, one run per {first.swept} and seed"
            if first.swept != "-" else f"{first.label} on the {first.learns_from}, one run per seed")
    return Stage(name, tuple(s.format(name) for s in wiring["sections"]), needs=wiring["needs"], what=what,
                 module="" if first.module == name else first.module,
                 split=tuple(s.format(name) for s in wiring.get("split", ())), seeded=True,
                 revision=wiring.get("revision", 0) + max(m.revision for m in methods))


_BY_STAGE = method_stages()
METHOD_STAGES = {name: method_stage(name, ms) for kind in WIRING for name, ms in _BY_STAGE.items() if ms[0].kind == kind}
# what eval and the report read, in frontier.csv's row order: the paper's methods first, offline before online
READ_ORDER = sorted(METHOD_STAGES, key=lambda n: (not _BY_STAGE[n][0].paper,
                                                   ("pairs", "ppo", "online", "best_of_n").index(_BY_STAGE[n][0].kind)))

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("sft", ("data", "sft", "train"), what="fine-tune a causal LM on IMDb reviews",
              split=("sft.batch_size",)),
        Stage("ground_truth", ("data", "ground_truth"), what="the sentiment scorer, reward = P(positive)",
              multiprocess=False),
        # revision 1: reference log-probs in fp32 on every device (they were bf16 under CUDA's autocast), prompt_index
        Stage("pairs", ("data", "pairs", "ground_truth"), needs=("sft", "ground_truth"),
              what="4 SFT samples per prompt, all pairs labelled by the ground truth", revision=1),
        Stage("reward_model", ("reward_model", "train"), needs=("sft", "pairs"),
              what="Bradley-Terry reward model on the pairs, normalised on SFT samples",
              split=("reward_model.batch_size",)),
        *METHOD_STAGES.values(),
        Stage("eval", ("data", "eval", "ground_truth"), needs=("sft", "ground_truth", "reward_model", *READ_ORDER),
              publish=("frontier.csv", "frontier.png", "frontier.pdf", "frontier_panels.png", "frontier_panels.pdf"),
              what="sample every checkpoint, score, exact KL to the SFT model, frontier"),
        # revision 1: summary.json carries each interval's variance and degrees of freedom (imdb-scaling reads them);
        # 2: it names its format (core.verdict.SUMMARY_FORMAT); 3: coverage (a side not covering a budget is not
        # compared there) and summary format 3
        Stage("report", tuple(SECTIONS),
              needs=("sft", "ground_truth", "pairs", "reward_model", *READ_ORDER, "eval"),
              publish=("report.md", "report.html", "frontier_bands.png", "frontier_bands.pdf", "overoptimisation.png",
                       "overoptimisation.pdf"),
              what="the verdict over seeds, tables, figures and samples of the whole run",
              multiprocess=False, revision=3),
    )
}

# Shared by every training seed unless reseed_shared: then each makes one artifact per seed (<stage>/seed<k>/)
RESEEDED = ("sft", "pairs", "reward_model")


def stages(cfg: BenchmarkConfig) -> dict[str, Stage]:
    """The stages of this run: every stage but the method stages of methods it does not put on the frontier,
    which eval and report then do not wait for."""
    chosen = {METHODS[m].stage for m in cfg.methods}
    keep = [s for s in STAGES.values() if s.name not in METHOD_STAGES or s.name in chosen]
    names = {s.name for s in keep}
    return {s.name: dataclasses.replace(s, needs=tuple(n for n in s.needs if n in names)) for s in keep}


def _descendants(name: str) -> set[str]:
    below = {s.name for s in STAGES.values() if name in s.needs}
    return below.union(*(_descendants(n) for n in below)) if below else set()


def _solo() -> frozenset[str]:
    """Multiprocess stages that can never run beside another multiprocess stage: each other one is upstream
    or downstream of it."""
    multi = [s.name for s in STAGES.values() if s.multiprocess]
    related = {n: _descendants(n) | {m for m in multi if n in _descendants(m)} for n in multi}
    return frozenset(n for n in multi if all(m == n or m in related[n] for m in multi))


SOLO = _solo()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def stage_config(cfg: BenchmarkConfig, stage: Stage, protocol: dict | None = None) -> dict:
    config = {"seed": cfg.seed}
    # the stages that read artifacts made one per training seed (<stage>/seed<k>/): only when re-seeded, so the
    # default configs (and their hashes) do not mention it
    reseeded = cfg.reseed_shared and (stage.seeded or stage.name in RESEEDED + ("eval", "report"))
    if stage.seeded or stage.name == "report" or reseeded:  # the methods train once per seed; the report's table
        config["seeds"] = cfg.seeds
    if reseeded:
        config["per_seed_stages"] = list(RESEEDED)
    hosted = [m for m, method in METHODS.items() if method.stage == stage.name]
    if len(hosted) > 1:  # a stage of several methods (ppo and ppo-gt) trains the chosen ones
        config["methods"] = [m for m in hosted if m in cfg.methods]  # in the registry's order: one hash for one set
    if stage.revision:
        config["revision"] = stage.revision
    config.update({name: cfg.section(name) for name in stage.sections})
    if stage.name != "report":  # notes (a method's `tuned`) are for the report: rewriting one retrains nothing
        config.update({name: {k: v for k, v in config[name].items() if k not in note_fields(name)}
                       for name in stage.sections})
    for section in config.values():  # pairs.sampler / eval.sampler: "auto" -> the sampler that will run
        if isinstance(section, dict) and section.get("sampler") == "auto":
            section["sampler"] = "vllm" if vllm_installed() else "hf"
    if stage.name == "report":  # its protocol table sets this scale beside the paper's settings
        config["protocol"] = protocol or {}
    return config
