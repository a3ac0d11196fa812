"""Every method the benchmark can put on the frontier, declared once: everything else is derived from this table.

A method is its name (frontier.csv's `method`, the `methods` config key), the stage that trains it (also its config
section: `[<stage>]` in benchmarks.toml, a field of core.config.BenchmarkConfig) and the module that runs the stage
(`python -m <module>`), how figures and tables show it, and what the wiring needs:
- the spine (pipelines/stages.py) makes one stage per `stage`; the module's kind (pairs, online, ppo, best_of_n) gives
  the config sections it reads, the stages it needs and the batch split over processes;
- the config resolves a section's unset keys from `inherits` (pipelines/config.py); the section's schema marks its
  list of runs (core.config.sweep_lists);
- `loss` picks the TRL trainer and loss of a `dpo` module method (dpo/__main__.py);
- the verdict compares each method of `against` with it (core/comparison.py: PAIRS);
- bench/flops.py counts a stage's FLOPs by its module's kind;
- docs/methods.md's table is generated from `implementation` and `swept` (`make reference`).
Adding a method: docs/adding-a-method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

# how each module trains: what its stage reads (pipelines/stages.py) and how bench/flops.py counts it
KINDS = {"dpo": "pairs", "dpo.relatives": "pairs", "online": "online", "ppo": "ppo", "best_of_n": "best_of_n"}


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # in figures, tables and the verdict's sentences
    stage: str  # the stage (and config section) that trains it; its runs.json lists the method's runs
    color: str
    marker: str
    learns_from: str  # "pairs" (offline), "reward model" (the learned proxy) or "ground truth" (the true reward)
    module: str = "dpo"  # `python -m <module>` runs the stage (a key of KINDS)
    swept: str = "beta"  # what its section's list of runs (core.config.sweep_lists) sweeps, in docs/methods.md's words
    implementation: str = ""  # who implements it (docs/methods.md)
    inherits: str | None = None  # the section whose keys its section takes where it sets none (after a scale's)
    loss: str = ""  # module dpo: the loss (DPOTrainer's loss_type, or kto / simpo / cpo / orpo: their trainers)
    against: tuple[str, ...] = ("dpo",)  # the verdict compares each of these with it: (that one) - (this one)
    paper: bool = False  # one of the DPO paper's Fig. 2 (left) methods: the default run
    revision: int = 0  # raised when a fix changes what its stage computes: finished folders are then stale

    @property
    def kind(self) -> str:
        return KINDS[self.module]


_OWN_LOOP = 'ours: the pairs loop (`dpo/loop.py`), the loss of TRL `DPOTrainer`\'s `loss_type="{}"` (pinned to it)'


def _pair(name, label, color, marker, loss, implementation, swept="beta", **kw) -> Method:
    """A relative of DPO on the pairs (DPOTrainer's loss in our loop, or a TRL trainer): its unset keys are [dpo]'s."""
    return Method(name, label, name, color, marker, "pairs", loss=loss, implementation=implementation, swept=swept,
                  inherits="dpo", **kw)


def _online(name, label, stage, color, marker, learns_from, implementation, against, **kw) -> Method:
    return Method(name, label, stage, color, marker, learns_from, module="online", implementation=implementation,
                  against=against, **kw)


METHODS: dict[str, Method] = {m.name: m for m in (
    # revision 1 (dpo, ipo, slic, rdpo): trained in our pairs loop with the loss pinned to DPOTrainer's, not by it
    Method("dpo", "DPO", "dpo", "tab:red", "o", "pairs", loss="sigmoid", against=(), paper=True, revision=1,
           implementation=_OWN_LOOP.format("sigmoid")),
    Method("ppo", "PPO", "ppo", "tab:blue", "s", "reward model", module="ppo", swept="target KL",
           implementation="ours (`ppo/`, on transformers + accelerate; TRL 1.16 has no PPOTrainer)", paper=True),
    Method("ppo-gt", "PPO-GT", "ppo", "tab:cyan", "D", "ground truth", module="ppo",
           swept="target KL", implementation="ours", against=("dpo", "ppo"), paper=True),
    # revision 1: the paper's loss (alpha x log p(y_l)), not Welleck et al.'s token-level one (now unlikelihood-token)
    Method("unlikelihood", "Unlikelihood", "unlikelihood", "tab:green", "^", "pairs", module="dpo.relatives",
           swept="alpha", implementation="ours (`dpo/relatives.py`: no library has it), the paper's -log p(y_w) + "
                                          "alpha log p(y_l)", paper=True, revision=1),
    Method("preferred-ft", "Preferred-FT", "preferred_ft", "tab:purple", "v", "pairs", module="dpo.relatives",
           swept="-", implementation="ours (`dpo/relatives.py`), on the chosen completions", paper=True),
    Method("unlikelihood-token", "Unlikelihood (token)", "unlikelihood_token", "yellowgreen", "<", "pairs",
           module="dpo.relatives", swept="alpha", inherits="unlikelihood",
           implementation="ours (`dpo/relatives.py`), Welleck et al.'s token-level -log(1 - p)"),
    _pair("ipo", "IPO", "tab:orange", "P", "ipo", _OWN_LOOP.format("ipo"), swept="tau (`betas`)", revision=1),
    _pair("slic", "SLiC", "tab:brown", "X", "hinge", _OWN_LOOP.format("hinge"), revision=1),
    _pair("rdpo", "rDPO", "tab:pink", "h", "robust", _OWN_LOOP.format("robust") + ", `label_smoothing` 0.1",
          revision=1),
    _pair("simpo", "SimPO", "olive", "o", "simpo",
          'TRL `trl.experimental` `CPOTrainer`, `loss_type="simpo"`, `cpo_alpha` 0'),
    _pair("cpo", "CPO", "slateblue", "s", "cpo", 'TRL `trl.experimental` `CPOTrainer`, `loss_type="sigmoid"`, '
                                                 '`cpo_alpha` 1'),
    _pair("orpo", "ORPO", "darkorange", "^", "orpo", "TRL `trl.experimental` `ORPOTrainer`", swept="beta (lambda)"),
    # revision 1: per prompt its best and worst sample as singles, not every pair split
    _pair("kto", "KTO", "deeppink", "v", "kto", "TRL `KTOTrainer`, per prompt its best and worst sample as singles",
          revision=1),
    _online("rloo", "RLOO", "rloo", "navy", "d", "reward model", "TRL `RLOOTrainer`", ("dpo", "ppo"),
            swept="beta (KL coefficient)"),
    _online("rloo-gt", "RLOO-GT", "rloo", "teal", "*", "ground truth", "TRL `RLOOTrainer`", ("dpo", "ppo-gt")),
    _online("grpo", "GRPO", "grpo", "darkgoldenrod", "p", "reward model",
            'TRL `GRPOTrainer`, `loss_type="grpo"`, beta > 0', ("dpo", "ppo"), inherits="rloo", swept="beta (per token)"),
    _online("grpo-gt", "GRPO-GT", "grpo", "gold", "H", "ground truth", "TRL `GRPOTrainer`", ("dpo", "ppo-gt"),
            inherits="rloo"),
    _online("online-dpo", "Online DPO", "online_dpo", "darkred", "8", "reward model",
            "TRL `trl.experimental` `OnlineDPOTrainer`", ("dpo",), inherits="rloo"),
    _online("online-dpo-gt", "Online DPO-GT", "online_dpo", "salmon", "8", "ground truth", "TRL `OnlineDPOTrainer`",
            ("dpo",), inherits="rloo"),
    Method("best-of-n", "Best-of-N (RM)", "best_of_n", "tab:olive", "<", "reward model", module="best_of_n",
           swept="N", implementation="ours (`best_of_n/`: sampling and an exact subset average)"),
    Method("best-of-n-gt", "Best-of-N (GT)", "best_of_n", "tab:gray", ">", "ground truth", module="best_of_n",
           swept="N", implementation="ours"),
)}
PAPER = tuple(name for name, m in METHODS.items() if m.paper)
SFT = Method("sft", "SFT", "sft", "black", "*", "", against=())  # the reference point of every figure (KL 0)


def stages() -> dict[str, list[Method]]:
    """Each method stage and the methods it trains, in the registry's order."""
    out: dict[str, list[Method]] = {}
    for m in METHODS.values():
        out.setdefault(m.stage, []).append(m)
    return out


def stage_method(stage: str) -> Method:
    """The first method of a stage: what its methods share (module, inheritance, loss)."""
    return stages()[stage][0]


def inherits() -> dict[str, str]:
    """section -> the section whose keys it takes where it sets none (DPO's relatives [dpo]'s, GRPO and Online DPO
    [rloo]'s)."""
    return {stage: ms[0].inherits for stage, ms in stages().items() if ms[0].inherits}


def label(name: str) -> str:
    return SFT.label if name == "sft" else METHODS[name].label if name in METHODS else name


def style(name: str) -> tuple[str, str]:
    """(colour, marker) of a method in every figure."""
    m = SFT if name == "sft" else METHODS.get(name)
    return (m.color, m.marker) if m else ("gray", "x")
