"""Every method the benchmark can put on the frontier: its name (frontier.csv's `method`, the `methods` config
key), the stage that trains it, how figures and tables show it, and whether it is one of the paper's (who
implements each: docs/methods.md).

One place for all of it: the spine reads `stage` (which stages a run needs), eval and report read the labels and
styles. Adding a method adds a line here (docs/adding-a-method.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # in figures, tables and the verdict's sentences
    stage: str  # the stage (pipelines/graph.py) whose runs.json lists its runs
    color: str
    marker: str
    learns_from: str  # "pairs" (offline), "reward model" (the learned proxy) or "ground truth" (the true reward)
    paper: bool = False  # one of the DPO paper's Fig. 2 (left) methods: the default run


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dpo", "DPO", "dpo", "tab:red", "o", "pairs", paper=True),
    Method("ppo", "PPO", "ppo", "tab:blue", "s", "reward model", paper=True),
    Method("ppo-gt", "PPO-GT", "ppo", "tab:cyan", "D", "ground truth", paper=True),
    Method("unlikelihood", "Unlikelihood", "unlikelihood", "tab:green", "^", "pairs", paper=True),
    Method("preferred-ft", "Preferred-FT", "preferred_ft", "tab:purple", "v", "pairs", paper=True),
    Method("ipo", "IPO", "ipo", "tab:orange", "P", "pairs"),
    Method("slic", "SLiC", "slic", "tab:brown", "X", "pairs"),
    Method("rdpo", "rDPO", "rdpo", "tab:pink", "h", "pairs"),
    Method("simpo", "SimPO", "simpo", "olive", "o", "pairs"),
    Method("cpo", "CPO", "cpo", "slateblue", "s", "pairs"),
    Method("orpo", "ORPO", "orpo", "darkorange", "^", "pairs"),
    Method("kto", "KTO", "kto", "deeppink", "v", "pairs"),
    Method("rloo", "RLOO", "rloo", "navy", "d", "reward model"),
    Method("rloo-gt", "RLOO-GT", "rloo", "teal", "*", "ground truth"),
    Method("grpo", "GRPO", "grpo", "darkgoldenrod", "p", "reward model"),
    Method("grpo-gt", "GRPO-GT", "grpo", "gold", "H", "ground truth"),
    Method("online-dpo", "Online DPO", "online_dpo", "darkred", "8", "reward model"),
    Method("online-dpo-gt", "Online DPO-GT", "online_dpo", "salmon", "8", "ground truth"),
    Method("best-of-n", "Best-of-N (RM)", "best_of_n", "tab:olive", "<", "reward model"),
    Method("best-of-n-gt", "Best-of-N (GT)", "best_of_n", "tab:gray", ">", "ground truth"),
)}
PAPER = tuple(name for name, m in METHODS.items() if m.paper)
SFT = Method("sft", "SFT", "sft", "black", "*", "")  # the reference point of every figure (KL 0)


def label(name: str) -> str:
    return SFT.label if name == "sft" else METHODS[name].label if name in METHODS else name


def style(name: str) -> tuple[str, str]:
    """(colour, marker) of a method in every figure."""
    m = SFT if name == "sft" else METHODS.get(name)
    return (m.color, m.marker) if m else ("gray", "x")
