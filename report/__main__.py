"""Stage report: the whole run on one page, report.md and a self-contained report.html.

Everything in it is read from the finished stages: the frontier (eval), each method's runs (runs.json), the
reward model's and the ground truth's diagnostics, every stage's wall time and peak memory (manifests). The
page is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered twice.
"""

import base64
import csv
import html
import json
import logging
import shutil
import time

from core import job as jobs
from core import tracking
from core.frontier import best_within, frontier_area
from pipelines.config import flatten

log = logging.getLogger("stage")
METHODS = {"dpo": "DPO", "ppo": "PPO", "ppo-gt": "PPO-GT", "unlikelihood": "Unlikelihood",
           "preferred-ft": "Preferred-FT"}
FIGURES = ("frontier.png", "frontier.pdf", "frontier_panels.png", "frontier_panels.pdf")


def read_frontier(path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("kl", "kl_se", "kl_mc", "reward", "reward_se"):
            r[k] = float(r[k])
        r["step"] = int(r["step"])
    return rows


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}"
    return str(x)


def method_table(rows: list[dict], runs: dict[str, list[dict]], cfg) -> tuple[list[str], list[list[str]]]:
    """Per method: runs, checkpoints, best reward within each KL budget (and where), frontier area."""
    sft = next(r for r in rows if r["method"] == "sft")
    header = (["method", "runs", "checkpoints"] + [f"best reward, KL <= {b:g}" for b in cfg.kl_budgets]
              + [f"front area, KL 0-{cfg.area_max_kl:g}"])
    body = [["SFT", "1", "1"] + [fmt(sft["reward"])] * len(cfg.kl_budgets) + [fmt(sft["reward"])]]
    for method, label in METHODS.items():
        pts = [r for r in rows if r["method"] == method]
        if not pts:
            continue
        xy = [(sft["kl"], sft["reward"])] + [(r["kl"], r["reward"]) for r in pts]
        cells = []
        for budget in cfg.kl_budgets:
            best = best_within(xy, budget)
            where = max((r for r in pts if r["kl"] <= budget), key=lambda r: r["reward"], default=None)
            cells.append(fmt(best) + (f" ({where['run']} @{where['step']}, KL {where['kl']:.1f})"
                                      if where and where["reward"] == best else " (SFT)"))
        body.append([label, str(len(runs.get(method, []))), str(len(pts))] + cells
                    + [fmt(frontier_area(xy, cfg.area_max_kl))])
    return header, body


def compute_table(runs: dict[str, list[dict]], manifests: dict[str, dict], pairs_tokens: int):
    """Per method: training wall time, tokens generated and trained on, the peak memory of its stage."""
    stage_of = {"dpo": "dpo", "unlikelihood": "unlikelihood", "preferred-ft": "preferred_ft", "ppo": "ppo",
                "ppo-gt": "ppo"}
    header = ["method", "train time (s)", "tokens generated", "tokens trained on", "peak memory (MiB)"]
    body = []
    for method, label in METHODS.items():
        if method not in runs:
            continue
        rs, metrics = runs[method], manifests[stage_of[method]]["metrics"]
        generated = sum(r.get("tokens_generated", 0) for r in rs)
        body.append([label, fmt(sum(r["train_seconds"] for r in rs), 0),
                     fmt(generated) if generated else f"0 (trains on the pairs' {pairs_tokens:,})",
                     fmt(sum(r.get("tokens_trained", 0) for r in rs)),
                     fmt(metrics.get("peak_gpu_mib", metrics.get("peak_rss_mib")), 0)])
    return header, body


def protocol_table(protocol: dict, config: dict) -> tuple[list[str], list[list[str]]]:
    """Every setting of the paper's protocol beside this scale's value."""
    paper, here = flatten(protocol), flatten({k: v for k, v in config.items() if k != "protocol"})
    body = [[f"`{k}`", str(v), str(here[k]), "" if here[k] == v else "differs"] for k, v in paper.items() if k in here]
    return ["setting", "paper", "this scale", ""], body


def samples_table(rows: list[dict], samples: dict, n: int) -> tuple[list[str], list[list[str]]]:
    """The first n held-out prompts: one completion per method, from its highest-reward checkpoint."""
    keys = {"SFT": "sft"}
    for method, label in METHODS.items():
        pts = [r for r in rows if r["method"] == method]
        if pts:
            best = max(pts, key=lambda r: r["reward"])
            keys[f"{label} ({best['run']} @{best['step']})"] = f"{method}/{best['run']}/step{best['step']}"
    body = []
    for i, prompt in enumerate(samples["prompts"][:n]):
        for label, key in keys.items():
            s = samples["completions"].get(key, [])
            if i < len(s):
                body.append([prompt if label == "SFT" else "", label, s[i]["text"], fmt(s[i]["reward"], 2)])
    return ["prompt", "method", "completion", "reward"], body


def checks_table(rows: list[dict], runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Does each run do what it was set to? PPO: its last checkpoint's exact KL against its target (a run that
    misses it by more than 25% is flagged); DPO: the held-out DPO loss over its checkpoints (flagged when it rises:
    above log 2 alone is not a failure, the spread of per-pair margins adds beta^2 var / 8 to it); Unlikelihood: the
    size of its unlikelihood term (alpha x the mean -log(1 - p) over rejected tokens), against Preferred-FT's loss."""
    body = []
    for method in ("ppo", "ppo-gt"):
        for run in runs.get(method, []):
            last = max((r for r in rows if r["run"] == run["run"]), key=lambda r: r["step"], default=None)
            if last is None:
                continue
            ratio = last["kl"] / run["param"]
            body.append([run["run"], f"final KL {last['kl']:.2f} for target {run['param']:g} ({ratio:.2f}x)",
                         "yes" if 0.75 <= ratio <= 1.25 else "NO: misses its target by more than 25%"])
    for run in runs.get("dpo", []):
        curve = run.get("heldout") or []
        if curve:
            losses = " -> ".join(f"{h['loss']:.3f}" for h in curve)
            accuracy = " -> ".join("n/a" if h["reward_accuracy"] is None else f"{h['reward_accuracy']:.2f}"
                                   for h in curve)
            body.append([f"dpo-{run['run']}", f"held-out DPO loss by checkpoint {losses} (log 2 = 0.693 at the "
                         f"start), reward accuracy {accuracy}",
                         "yes" if len(curve) < 2 or curve[-1]["loss"] < curve[0]["loss"] else
                         "NO: the held-out loss rises"])
    for run in runs.get("unlikelihood", []):
        if "unlikelihood_term" in run:
            body.append([f"unlikelihood-{run['run']}", f"unlikelihood term {run['unlikelihood_term']:.4f} nats "
                         f"beside a total loss of {run['final_loss']:.3f}", "-"])
    return ["run", "measured", "as intended"], body


def sampler_row(stage: str, metrics: dict) -> list[str]:
    """Who drew the stage's samples; for vLLM, how far its log-probs of them were from the HF model's."""
    gap = metrics.get("sampler_logp_gap")
    return [f"{stage}: sampler", metrics.get("sampler", "hf") +
            ("" if gap is None else f" (its log-probs {gap:.2g} nats per token from the HF model's)")]


def build(job) -> list[tuple]:
    cfg = job.section("report")
    inputs = job.inputs
    manifests = {name: json.loads((folder / "manifest.json").read_text()) for name, folder in inputs.items()}
    rows = read_frontier(inputs["eval"] / "frontier.csv")
    runs: dict[str, list[dict]] = {}
    for stage in ("dpo", "unlikelihood", "preferred_ft", "ppo"):
        for r in json.loads((inputs[stage] / "runs.json").read_text()):
            runs.setdefault(r["method"], []).append(r)
    samples = json.loads((inputs["eval"] / "samples.json").read_text())
    pairs, gt, rm = manifests["pairs"]["metrics"], manifests["ground_truth"]["metrics"], manifests["reward_model"]["metrics"]
    pairs_tokens = round(pairs["prompts"] * job.config["pairs"]["samples_per_prompt"] * pairs["mean_completion_tokens"])
    sft = next(r for r in rows if r["method"] == "sft")
    ev = job.config["eval"]
    blocks = [
        ("h1", f"{job.benchmark} at scale {job.scale}: RLHF (PPO) vs DPO"),
        ("p", f"Every method starts from one SFT model and is evaluated on {ev['prompts']} held-out IMDb prompts, "
              f"one pure sample each ({ev['max_new_tokens']} tokens at most): reward = the ground truth's mean "
              f"P(positive | {job.config['ground_truth']['reads']}), KL = the exact sequence KL(pi || pi_ref) to "
              f"the SFT model. Seed {job.seed}; "
              f"written {time.strftime('%Y-%m-%d %H:%M')}; frontier.csv has every point with its standard errors."),
        ("h2", "Reward vs KL (the DPO paper's Fig. 2, left)"),
        ("img", "frontier.png", "every checkpoint of every method; lines: each method's Pareto front"),
        ("img", "frontier_panels.png", "one panel per method, its runs by colour; grey: the other methods' fronts"),
        ("h2", "Per method"),
        ("p", f"Best reward among the method's checkpoints (or the SFT model) with KL at most the budget; front "
              f"area = the mean over budgets 0-{cfg.area_max_kl:g} of that best reward. SFT: reward "
              f"{sft['reward']:.3f} +- {sft['reward_se']:.3f} at KL 0."),
        ("table", *method_table(rows, runs, cfg)),
        ("h2", "Training checks"),
        ("p", "Each run against what it was set to do (PPO: within 25% of its target KL; DPO: a held-out loss "
              "that falls over its checkpoints)."),
        ("table", *checks_table(rows, runs)),
        ("h2", "Reward model and ground truth"),
        ("table", ["diagnostic", "value"], [
            ["reward model: held-out pair accuracy", fmt(rm.get("heldout_pair_accuracy"))],
            ["reward model: Spearman correlation with the ground truth", fmt(rm.get("spearman_with_ground_truth"))],
            ["ground truth: held-out accuracy (full reviews)", fmt(gt.get("heldout_accuracy"))],
            ["ground truth: held-out accuracy (first words only)", fmt(gt.get("heldout_accuracy_prefix"))],
            ["pairs: labelled pairs (ties dropped)", f"{pairs['pairs']:,} ({pairs.get('ties_dropped', 0)})"],
            sampler_row("pairs", pairs), sampler_row("eval", manifests["eval"]["metrics"])]),
        ("h2", "Compute"),
        ("table", *compute_table(runs, manifests, pairs_tokens)),
        ("table", ["stage", "wall time (s)", "peak memory (MiB)"],
         [[name, fmt(m["wall_time_s"], 0), fmt(m["metrics"].get("peak_gpu_mib", m["metrics"].get("peak_rss_mib")), 0)]
          for name, m in manifests.items()]),
        ("h2", "Samples"),
        ("table", *samples_table(rows, samples, cfg.samples)),
        ("h2", "Protocol: the paper's settings and this scale's"),
        ("table", *protocol_table(job.config.get("protocol", {}), job.config)),
    ]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})\n\n*{args[1]}*")
        elif kind == "table":
            header, body = args
            out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
                                 + ["| " + " | ".join(map(cell, row)) + " |" for row in body]))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], folder) -> str:
    """The same page as one HTML file, the figures embedded so it can be mailed or attached as it is."""
    esc = html.escape
    code = lambda s: esc(s).replace("`", "")  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(args[0])}</p>")
        elif kind == "img":
            data = base64.b64encode((folder / args[0]).read_bytes()).decode()
            out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(args[1])}'>"
                       f"<figcaption>{esc(args[1])}</figcaption></figure>")
        elif kind == "table":
            header, body = args
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{code(str(c))}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
    return "\n".join(out + ["</body></html>"]) + "\n"


def main():
    job = jobs.start()
    wandb_run = tracking.start(job, "summary")  # the group's summary: the report's tables and page
    for name in FIGURES:  # beside report.md, so its links work here and where it is published
        shutil.copy2(job.inputs["eval"] / name, job.out / name)
    blocks = build(job)
    (job.out / "report.md").write_text(to_markdown(blocks))
    (job.out / "report.html").write_text(to_html(blocks, job.out))
    log.info("report.md and report.html: %d tables", sum(b[0] == "table" for b in blocks))
    if wandb_run:
        tables = [b for b in blocks if b[0] == "table"]
        wandb_run.log({"per_method": tracking.table(*tables[0][1:]), "compute": tracking.table(*tables[2][1:]),
                       "report": tracking.html((job.out / "report.html").read_text())})
    jobs.finish(job, {"tables": sum(b[0] == "table" for b in blocks)}, wandb_run)


if __name__ == "__main__":
    jobs.run(main)
