"""Stage scaling: does DPO's advantage over PPO hold as the model grows? Across the rungs of a ladder
(imdb-scaling), each a whole comparison from its own SFT model, it reads each rung's report (summary.json: per
method and measure the mean over seeds of the chosen checkpoint's test reward and its interval; the DPO - PPO
differences) and its SFT model's parameter count, and writes

    scaling.csv      rung, parameters, method (or comparison "a - b"), measure, reward, interval, seeds, cost
    scaling.png/pdf  per measure, each method's reward against parameters (log axis), with its interval; and
                     DPO - PPO against parameters
    scaling.md       per measure one sentence: how DPO - PPO changes from the smallest rung to the largest, the
                     change with its interval, and the word (DPO gains on PPO, PPO gains on DPO, not resolved)

The change's interval: the rungs are independent runs, so the two rungs' variances add, with Welch-Satterthwaite
degrees of freedom (core.verdict.independent_difference, on the variances summary.json carries). With one
training seed the rungs' intervals cover the test prompts only and no word is given (as the report's verdict).
"""

import csv
import json
import logging
import math

from core import job as jobs
from core.methods import label, style
from core.plots import panels, save
from core.verdict import Interval, independent_difference, read_summary

log = logging.getLogger("stage")
HEADLINE = "dpo - ppo"  # the question this project started from
FIELDS = ["rung", "parameters", "method", "measure", "reward", "low", "high", "seeds", "not_covered", "train_seconds",
          "tokens_generated", "tokens_trained"]  # not_covered: why a side's checkpoints miss the budget (not compared)


def read_rungs(job) -> list[dict]:
    """Per rung (the ladder's order): its name, SFT parameters, summary.json and stage wall times."""
    out = []
    for rung in job.config["rungs"]:
        folder = job.inputs[rung]
        sft = json.loads((folder / "sft" / "manifest.json").read_text())["metrics"]
        walls = {p.parent.name: json.loads(p.read_text())["wall_time_s"] for p in folder.glob("*/manifest.json")}
        out.append({"rung": rung, "parameters": sft["parameters"], "walls": walls,
                    "summary": summary(folder / "report" / "summary.json")})
    return out


def summary(path) -> dict:
    """A rung's summary.json; one of another format or damaged is one line naming it (the ladder's spine runs
    such a rung's report again before this stage, so here it means the file changed under the run)."""
    try:
        return read_summary(path)
    except ValueError as e:
        raise jobs.BadArtifact(f"{e}; run the ladder again: it redoes that rung's report") from None


def rows_of(rungs: list[dict]) -> list[dict]:
    """scaling.csv's rows: every method's and every comparison's value at every measure of every rung."""
    rows = []
    for r in rungs:
        s = r["summary"]
        for kind in ("methods", "comparisons"):
            for name, by_measure in s[kind].items():
                cost = s["compute"].get(name, {})
                for measure, iv in by_measure.items():
                    rows.append({"rung": r["rung"], "parameters": r["parameters"], "method": name, "measure": measure,
                                 "reward": iv["estimate"], "low": iv["low"], "high": iv["high"], "seeds": iv["seeds"],
                                 "not_covered": iv["not_covered"] or "",
                                 **{k: cost.get(k, "") for k in FIELDS[-3:]}})
    return rows


def as_interval(entry: dict) -> Interval:
    """An interval as summary.json has it (report: df null for a normal one)."""
    return Interval(entry["estimate"], entry["low"], entry["high"], entry["seeds"], entry["variance"],
                    math.inf if entry["df"] is None else entry["df"])


def trend_sentence(measure: str, rungs: list[dict], confidence: float) -> str:
    """One sentence: DPO - PPO at the smallest and the largest rung, the change and its word."""
    first, last = rungs[0], rungs[-1]
    a, b = first["summary"]["comparisons"][HEADLINE][measure], last["summary"]["comparisons"][HEADLINE][measure]
    uncovered = [f"{why} at {r['parameters'] / 1e6:.2f}M" for r, why in ((first, a["not_covered"]),
                                                                         (last, b["not_covered"])) if why]
    if uncovered:  # a side stopped below the budget (or never inside it): its value is not the method's there
        return f"At {measure}: DPO - PPO not compared ({'; '.join(uncovered)})."
    moved = independent_difference(as_interval(a), as_interval(b), confidence)
    word = {"DPO ahead": "DPO gains on PPO as the model grows", "PPO ahead": "PPO gains on DPO as the model grows",
            "not resolved": "not resolved"}[moved.word("DPO", "PPO")]  # the report's rule: seeds, and 0 outside
    if moved.seeds < 2:
        word += " (one training seed: no seed variance is known, so no verdict)"

    def at(iv, rung):
        return f"{iv['estimate']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}] at {rung['parameters'] / 1e6:.2f}M"

    return (f"At {measure}: DPO - PPO is {at(a, first)} and {at(b, last)} parameters; the change, "
            f"{moved.estimate:+.3f} [{moved.low:+.3f}, {moved.high:+.3f}]: {word}.")


def parameter_axis(ax) -> None:
    """Parameters on a log x axis, labelled at the decades only (a ladder's few rungs crowd minor labels)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("SFT model parameters")


def plot(rows: list[dict], measures: list[str], methods: list[str], path_stem) -> None:
    """One panel per measure: each method's reward against parameters; the last: DPO - PPO at every measure. A value
    whose checkpoints do not cover the budget (not compared) is a hollow grey ring, not joined to the others."""
    fig, axes = panels(len(measures) + 1, 4.2, 3.4)
    for ax, measure in zip(axes, measures):
        for method in methods:
            pts = sorted((r["parameters"], r["reward"], r["low"], r["high"]) for r in rows
                         if r["method"] == method and r["measure"] == measure)
            if not pts:
                continue
            color, marker = style(method)
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            ax.errorbar(x, y, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], color=color,
                        marker=marker, capsize=3, label=label(method))
        parameter_axis(ax)
        ax.set_title(measure, fontsize=10)
        ax.set_ylabel("test reward (chosen on select)")
        for r in (r for r in rows if r["not_covered"] and r["measure"] == measure and r["method"] in methods):
            ax.scatter([r["parameters"]], [r["reward"]], s=90, facecolors="none", edgecolors="gray", zorder=3)
    ax = axes[-1]
    for k, measure in enumerate(measures):
        pts = sorted((r["parameters"], r["reward"], r["low"], r["high"]) for r in rows
                     if r["method"] == HEADLINE and r["measure"] == measure)
        if pts:
            ax.errorbar([p[0] * (1 + 0.04 * k) for p in pts], [p[1] for p in pts],  # nudged apart to be seen
                        yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], marker="o", capsize=3,
                        label=measure)
    ax.axhline(0, color="gray", lw=0.8)
    parameter_axis(ax)
    ax.set_title("DPO - PPO", fontsize=10)
    ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    save(fig, path_stem, dpi=120)


def markdown(job, rungs: list[dict], measures: list[str], confidence: float) -> str:
    lines = [f"# {job.benchmark}, ladder {job.scale}: does DPO's advantage over PPO hold as the model grows?", ""]
    if all(HEADLINE in r["summary"]["comparisons"] for r in rungs):
        lines += [f"- {trend_sentence(m, rungs, confidence)}" for m in measures]
    else:
        lines.append("No DPO - PPO comparison: the ladder's methods need dpo and ppo.")
    lines += ["", f"Each rung is the whole comparison from its own SFT model (docs/scaling.md); values are the test "
                  f"reward of the checkpoint chosen on the select prompts, mean over training seeds, with "
                  f"{confidence:.0%} intervals (one seed: over the test prompts only).", "",
              "![per measure, each method's reward against parameters; last: DPO - PPO](scaling.png)", "",
              "| rung | parameters | method | " + " | ".join(measures) + " | train seconds | tokens generated |",
              "|" + " --- |" * (len(measures) + 5)]
    for r in rungs:
        s = r["summary"]
        for name in [*s["methods"], *s["comparisons"]]:
            signed = name in s["comparisons"]
            num = (lambda x: f"{x:+.3f}") if signed else (lambda x: f"{x:.3f}")  # noqa: E731
            cells = [f"{num(iv['estimate'])} [{num(iv['low'])}, {num(iv['high'])}]" + (" (not covered)" if
                     iv["not_covered"] else "") for iv in ((s["comparisons"] if signed else s["methods"])[name][m]
                                                          for m in measures)]
            cost = s["compute"].get(name)
            tail = f"{cost['train_seconds']:.0f} | {cost['tokens_generated']:,}" if cost else " | "
            lines.append(f"| {r['rung']} | {r['parameters'] / 1e6:.2f}M | {name if signed else label(name)} | "
                         + " | ".join(cells) + f" | {tail} |")
    lines += ["", "| rung | parameters | wall time of its stages (s) |", "| --- | --- | --- |"]
    lines += [f"| {r['rung']} | {r['parameters']:,} | {sum(r['walls'].values()):.0f} |" for r in rungs]
    return "\n".join(lines) + "\n"


def main():
    job = jobs.start()
    confidence = job.config["report"]["confidence"]
    rungs = read_rungs(job)
    measures = rungs[0]["summary"]["measures"]
    rows = rows_of(rungs)
    with open(job.out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, measures, job.config["methods"], job.out / "scaling")
    (job.out / "scaling.md").write_text(markdown(job, rungs, measures, confidence))
    log.info("scaling.md: %d rungs from %.2fM to %.2fM parameters", len(rungs), rungs[0]["parameters"] / 1e6,
             rungs[-1]["parameters"] / 1e6)
    jobs.finish(job, {"rungs": len(rungs), "parameters": [r["parameters"] for r in rungs]})


if __name__ == "__main__":
    jobs.run(main)
