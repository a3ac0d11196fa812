"""`python -m pipelines tune`: one tuning protocol for every method, blind to the test prompts.

A method's settings are chosen on the tune split, prompts from the ground truth's held-out reviews (disjoint from
the test and select prompts and from every review a model trains on; `eval.prompt_split = "tune"`), with the same
trial budget for every method: its learning rate(s) times each of `scales` (default 0.5, 1, 2), one training seed,
the method's own sweep as in the benchmark. Each trial is the benchmark's own stages for that one method (SFT model,
pairs and reward model shared by the trials, in <scale>-tune/shared/) up to eval (no report: the trial is read from
its frontier.csv), evaluated on the tune split: checkpoints
chosen on its select half, measured on its other half, as the report does on the test prompts. The choice is the
trial with the highest front area (the verdict's own measure, KL 0 to report.area_max_kl) among those whose
checkpoints reach the verdict's largest budget on the select half (else among all, and the page says so).

`--setting starts` tunes PPO's other per-scale setting the same way: its step-0 KL coefficients (init_kl_coefs, one
per target KL) times each of `scales`. The starts exist so that each run reaches its target within its few steps
(docs/kl-control.md), so where it lands is their measure: for each target, the starts as they stand if their run's
last checkpoint lands within 25% of it (the tune split's exact KL over the target), else the trial that lands
nearest. A user reruns it on another machine, where the starts may not land.

Every trial (setting, training seconds, tune reward at each KL budget, front area, furthest KL on select; for the
starts each target's landing) goes to <docs>/tuning-<scale>.md, one section per method and setting, replaced when
it is tuned again; --write puts the choice into the benchmarks file's table of the scale and method, with a note
(`tuned`, `starts_tuned`) the report quotes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import tomllib
from pathlib import Path

from core.config import ConfigError
from core.frontier import TARGET_TOLERANCE, choice_weights, on_target, read_frontier
from core.methods import METHODS

from . import graph, store
from .config import read_toml

log = logging.getLogger("pipelines")
SHARED = ("sft", "ground_truth", "pairs", "reward_model")  # the trials' common upstream
DEFAULT_SCALES = (0.5, 1.0, 2.0)
SETTINGS = {"lr": "tuned", "starts": "starts_tuned"}  # what a trial scales -> the section's note of its choice


def rate_keys(section) -> list[str]:
    """The learning-rate keys a trial scales: learning_rate, and learning_rates where it lists one per run."""
    return [k for k in ("learning_rate", "learning_rates") if getattr(section, k, None)]


def trial_config(cfg, method: str, scale: float, setting: str = "lr"):
    """cfg for one trial: that method alone, one training seed, evaluated on the tune split, its learning rate(s)
    (setting "lr") or its start coefficients ("starts") times scale."""
    stage = METHODS[method].stage
    section = getattr(cfg, stage)
    if scale == 1:  # the config as it stands, whatever the setting: one trial (lr-x1/)
        scaled = {}
    elif setting == "starts":
        scaled = {"init_kl_coefs": [c * scale for c in section.start_coefs()]}
    else:
        scaled = {k: (getattr(section, k) * scale if k == "learning_rate" else [r * scale for r in getattr(section, k)])
                  for k in rate_keys(section)}
    return dataclasses.replace(cfg, methods=[method], seeds=1, **{
        stage: dataclasses.replace(section, **scaled),
        "eval": dataclasses.replace(cfg.eval, prompt_split="tune")})


def trial_measures(frontier: list[dict], method: str, budgets: list[float], max_kl: float) -> dict:
    """The method's checkpoints (the SFT point among the candidates) chosen on the tune split's select half at each
    KL budget and for the front area, measured on its other half; and how far its checkpoints reach on select (the
    verdict's coverage: a trial stopped short of a budget is not compared there). -> {"KL <= b": (reward, kl) or
    None, "area": a, "reach": the highest KL of a trained checkpoint on select, or None}."""
    def points(split):
        rows = [r for r in frontier if r["split"] == split and r["method"] in ("sft", method)]
        return [(f"{r['method']}/{r['run']}/{r['step']}", r["kl"], r["reward"]) for r in rows]

    select = points("select")
    tune = {key: (kl, reward) for key, kl, reward in points("test")}  # the tune split's measured half
    out = {}
    for budget in budgets + [None]:
        weights = choice_weights([(kl, r) for _, kl, r in select], budget, max_kl)
        if not any(weights):
            out[f"KL <= {budget:g}" if budget is not None else "area"] = None
            continue
        reward = sum(w * tune[key][1] for w, (key, _, _) in zip(weights, select))
        kl = sum(w * tune[key][0] for w, (key, _, _) in zip(weights, select))
        out[f"KL <= {budget:g}" if budget is not None else "area"] = reward if budget is None else (reward, kl)
    out["reach"] = max((kl for key, kl, _ in select if not key.startswith("sft/")), default=None)
    return out


def landing(frontier: list[dict], method: str) -> dict[float, float]:
    """Each run's last checkpoint: its exact KL over every tune prompt (both halves, weighted by their prompts) over
    its target. -> {target: ratio}."""
    last = {}
    for r in frontier:
        if r["method"] == method and r["split"] in ("select", "test"):
            key = (float(r["param"]), r["split"])
            if key not in last or r["step"] > last[key]["step"]:
                last[key] = r
    out = {}
    for t in sorted({target for target, _ in last}):
        halves = [r for (u, _), r in last.items() if u == t]
        out[t] = sum(r["n"] * r["kl"] for r in halves) / sum(r["n"] for r in halves) / t
    return out


def run_trial(cfg, method: str, stage: str, scale: float, root: Path, shared: dict, protocol: dict, launch,
              source_id: str | None, setting: str = "lr") -> dict:
    """One trial (kept when finished: graph.run skips what is up to date), and what it measured on the tune split.
    Times 1 is the config as it stands whatever the setting: one trial, in lr-x1/."""
    trial = trial_config(cfg, method, scale, setting)
    folder = root / method / f"{'lr' if scale == 1 else setting}-x{scale:g}"
    log.info("tune %s: trial %s x%g (%s) in %s", method, setting, scale, setting_text(getattr(trial, stage), setting),
             folder)
    upto_eval = [name for name in graph.stages(trial) if name != "report"]  # a trial is measured from frontier.csv
    graph.run(trial, upto_eval, False, protocol, launch, source_id, root=folder, shared=shared)
    frontier = read_frontier(folder / "eval" / "frontier.csv")
    measures = trial_measures(frontier, method, list(cfg.report.kl_budgets), cfg.report.area_max_kl)
    return {"scale": scale, "rates": setting_text(getattr(trial, stage), setting),
            "train_seconds": store.read_manifest(folder / stage)["wall_time_s"], "measures": measures,
            "landing": landing(frontier, method) if METHODS[method].kind == "ppo" else {}}


def check(cfg, method: str, scales: tuple[float, ...], setting: str = "lr") -> None:
    """ConfigError (one line: what is wrong, what is allowed) unless the method can be tuned with these scales."""
    if setting not in SETTINGS:
        raise ConfigError(f"tune --setting {setting!r}: allowed: {', '.join(SETTINGS)}")
    if method not in METHODS or METHODS[method].kind not in ("pairs", "ppo", "online"):
        tunable = [m for m, spec in METHODS.items() if spec.kind in ("pairs", "ppo", "online")]
        raise ConfigError(f"tune --method {method!r}: allowed: {', '.join(tunable)}")
    if setting == "starts" and method != "ppo":
        raise ConfigError(f"tune --setting starts --method {method}: allowed: ppo (the starts are [ppo]'s, which "
                          f"PPO-GT shares; they are set for the learned reward PPO optimises)")
    if setting == "starts" and 1.0 not in scales:
        raise ConfigError(f"tune --setting starts --scales {','.join(f'{x:g}' for x in scales)}: allowed: scales "
                          f"that include 1 (the starts as they stand, kept where they land)")
    if setting == "lr" and not rate_keys(getattr(cfg, METHODS[method].stage)):
        raise ConfigError(f"tune: [{METHODS[method].stage}] has no learning rate to tune")
    if not scales or any(not (s > 0) or s != s or s == float("inf") for s in scales):
        raise ConfigError(f"tune --scales {','.join(map(str, scales))}: allowed: positive numbers, e.g. 0.5,1,2")


def run(cfg, method: str, scales: tuple[float, ...], protocol: dict, launch, source_id: str | None,
        docs: Path, config_path: Path | None = None, setting: str = "lr") -> dict:
    """Every trial of the method (finished ones are kept), then its section of <docs>/tuning-<scale>.md; with
    config_path, the choice written into that benchmarks file. -> the record of the trials."""
    check(cfg, method, scales, setting)
    stage = METHODS[method].stage
    root = store.run_root(cfg.benchmark, f"{cfg.scale}-tune")
    shared = {name: root / "shared" / name for name in SHARED}
    report = cfg.report
    trials = []
    root.mkdir(parents=True, exist_ok=True)
    with store.RunLock(root):  # two tune commands of one scale would race on the shared stages
        for scale in scales:
            trials.append(run_trial(cfg, method, stage, scale, root, shared, protocol, launch, source_id, setting))
    record = {"method": method, "stage": stage, "scale": cfg.scale, "trials": trials, "setting": setting,
              "budgets": list(report.kl_budgets), "area_max_kl": report.area_max_kl, "date": time.strftime("%Y-%m-%d")}
    if setting == "starts":
        record.update(choose_starts(getattr(cfg, stage), trials))
        chosen = dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage),
                                                                        init_kl_coefs=record["chosen_starts"])})
        how = (f"{record['date']}: per target, of x{', x'.join(f'{s:g}' for s in scales)} on the tune split (one "
               f"seed), x1 where it lands within {TARGET_TOLERANCE:.0%}, else the nearest landing "
               f"(docs/tuning-{cfg.scale}.md)")
        keep, said = {}, f"starts {record['chosen_rates']}"
    else:
        furthest = max(list(report.kl_budgets) + [report.area_max_kl])  # the verdict compares up to here
        best, reached = choose_rate(method, trials, furthest, report.area_max_kl)
        record.update(chosen=best["scale"], chosen_rates=best["rates"], reach=furthest, reached=reached)
        chosen = trial_config(cfg, method, best["scale"])
        how = (f"{record['date']}: lr x{best['scale']:g} of x{', x'.join(f'{s:g}' for s in scales)} on the tune "
               f"split, one seed (docs/tuning-{cfg.scale}.md)")
        keep, said = inheriting_rates(cfg, stage), f"lr x{best['scale']:g} ({best['rates']})"
    page = docs / f"tuning-{cfg.scale}.md"
    store.write_text_atomic(page, tuning_page(page.read_text() if page.is_file() else "", record))
    log.info("tune %s: chose %s; every trial in %s", method, said, page)
    if config_path is not None:
        write_choice(config_path, cfg.benchmark, cfg.scale, stage, chosen, how, keep, setting, before=cfg)
        log.info("tune %s: wrote the choice into %s", method, config_path)
    return record


def choose_rate(method: str, trials: list[dict], furthest: float, area_max_kl: float) -> tuple[dict, bool]:
    """The trial of the highest front area among those whose checkpoints reach KL `furthest` on select (the verdict
    compares a method only at budgets it reaches: a rate that stops short would win an area it is not compared on);
    if none reaches it, of all. A tie: the scale nearer 1. -> (the trial, whether it reaches)."""
    scored = [t for t in trials if t["measures"]["area"] is not None]
    if not scored:
        raise ConfigError(f"tune {method}: no trial has a front area on the tune split (no checkpoint within KL "
                          f"{area_max_kl:g}); nothing chosen")
    reaching = [t for t in scored if (t["measures"].get("reach") or 0) >= furthest]
    return max(reaching or scored, key=lambda t: (t["measures"]["area"], -abs(t["scale"] - 1))), bool(reaching)


def choose_starts(section, trials: list[dict]) -> dict:
    """Per target: the starts as they stand (the trial nearest x1) among the trials whose last checkpoint lands on
    it (core.frontier.on_target: within 25%, as the report checks), else the trial that lands nearest it
    (|log(KL / target)|). One seed's landing moves by a
    few percent between trials whose starts differ 2x (docs/tuning-tiny.md), so "nearest" alone would follow that
    noise; the band is what the starts are for. -> {"chosen": {target: scale}, "chosen_starts": [coefficient per
    target], "chosen_rates": its text}."""
    import math

    chosen, coefs = {}, []
    for target, start in zip(section.target_kls, section.start_coefs()):
        landed = [t for t in trials if t["landing"].get(target, 0) > 0]  # KL 0 or not a number: it went nowhere
        if not landed:
            raise ConfigError(f"tune starts: no trial's run of target KL {target:g} ended at a KL above 0 on the tune "
                              f"split; nothing chosen")
        within = [t for t in landed if on_target(t["landing"][target], 1.0)]
        best = (min(within, key=lambda t: (abs(math.log(t["scale"])), abs(math.log(t["landing"][target]))))
                if within else min(landed, key=lambda t: (abs(math.log(t["landing"][target])),
                                                          abs(math.log(t["scale"])))))
        chosen[target] = best["scale"]
        coefs.append(start * best["scale"])
    return {"chosen": chosen, "chosen_starts": coefs, "chosen_rates": f"init_kl_coefs = {coefs!r}"}


def inheriting_rates(cfg, stage: str) -> dict:
    """The sections that take `stage`'s learning rate(s) (core.methods inherits: the relatives of [dpo] that set
    none of their own), with those rates: written out as they are, so tuning DPO does not move IPO or KTO. A
    per-run list of rates goes with the runs it was set for (the betas too), so it cannot meet another sweep."""
    from core.config import sweep_lists
    from core.methods import inherits

    parent = getattr(cfg, stage)
    out = {}
    for child, of in inherits().items():
        section = getattr(cfg, child, None)
        if of == stage and section is not None:
            same = {k: getattr(section, k) for k in rate_keys(parent) if getattr(section, k, None) == getattr(parent, k)}
            runs, per_run = sweep_lists(child)
            if runs and any(k in per_run for k in same):
                same[runs] = getattr(section, runs)
            if same:
                out[child] = same
    return out


def rates_text(section) -> str:
    return ", ".join(f"{k} = {getattr(section, k)!r}" for k in rate_keys(section))


def setting_text(section, setting: str) -> str:
    return f"init_kl_coefs = {section.start_coefs()!r}" if setting == "starts" else rates_text(section)


def tuning_page(text: str, record: dict) -> str:
    """The page with the method's section (re)written: a table of its trials and the choice (`<method>` for its
    learning rate, `<method>-starts` for PPO's start coefficients)."""
    title = f"# Tuning at scale {record['scale']}\n\n" \
            "Each method's learning rate(s) chosen on the tune split (`python -m pipelines tune`, docs/protocol.md): the\n" \
            "same trials for every method (its rate(s) x each scale, one training seed, its own sweep), the choice the\n" \
            "highest front area on the tune split among the trials that reach the verdict's largest budget. PPO's start\n" \
            "coefficients (`--setting starts`): the same trials of its init_kl_coefs; per target, x1 where its run lands\n" \
            "within 25% of the target, else the nearest landing. Never the test prompts.\n"
    sections = dict(re.findall(r"(?ms)^## (\S+)\n(.*?)(?=^## |\Z)", text))
    starts_ = record.get("setting") == "starts"
    budgets = [f"KL <= {b:g}" for b in record["budgets"]]
    targets = sorted({t for trial in record["trials"] for t in trial.get("landing", {})})
    if starts_:
        choice = ", ".join(f"KL {t:g}: x{x:g}" for t, x in record["chosen"].items())
        head = f"Tuned {record['date']}: {len(record['trials'])} trials; chosen per target: {choice} " \
               f"({record['chosen_rates']})."
    else:
        head = f"Tuned {record['date']}: {len(record['trials'])} trials; chosen: lr x{record['chosen']:g} " \
               f"({record['chosen_rates']})."
        if "reach" in record:
            head += (f" The highest front area among the trials whose checkpoints reach KL {record['reach']:g} on "
                     f"select (the verdict's largest budget)." if record["reached"] else
                     f" No trial's checkpoints reach KL {record['reach']:g} on select: the highest front area of all, "
                     f"and the verdict will not compare it at that budget.")
    lines = [head, "",
             f"| {'starts' if starts_ else 'lr'} x | {'coefficients' if starts_ else 'rates'} | training s | " +
             " | ".join(f"reward (KL) at {b}" for b in budgets) + f" | front area, KL 0-{record['area_max_kl']:g} |" +
             " furthest KL (select) |" +
             "".join(f" KL / target {t:g} |" for t in targets),
             "| --- | --- | --- | " + " | ".join("---" for _ in budgets) + " | --- | --- |" + " --- |" * len(targets)]
    for t in record["trials"]:
        cells = [f"{t['measures'][b][0]:.3f} ({t['measures'][b][1]:.2f})" if t["measures"][b] else "none within"
                 for b in budgets]
        area = t["measures"]["area"]
        landed = [f"{t['landing'][x]:.2f}" if x in t.get("landing", {}) else "-" for x in targets]
        lines.append(f"| {t['scale']:g} | {t['rates']} | {t['train_seconds']:.0f} | " + " | ".join(cells) +
                     f" | {'n/a' if area is None else f'{area:.3f}'} |" +
                     (f" {reach:.2f} |" if (reach := t["measures"].get("reach")) is not None else " - |") +
                     "".join(f" {c} |" for c in landed))
    sections[record["method"] + ("-starts" if starts_ else "")] = "\n".join(lines) + "\n\n"
    return title + "\n" + "".join(f"## {m}\n{body}" for m, body in sorted(sections.items()))


def _key(part: str) -> str:
    """A TOML key as a header writes it: bare when it can be, else quoted (a scale name may hold a dot)."""
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _header_path(line: str) -> list[str] | None:
    """The dotted key of a [table] header line (a header with its comment is a TOML document of its own), parts
    unquoted; None when the line is not a table header."""
    if not line.lstrip().startswith("[") or line.lstrip().startswith("[["):
        return None
    try:
        doc = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    path = []
    while isinstance(doc, dict) and len(doc) == 1:
        key, doc = next(iter(doc.items()))
        path.append(key)
    return path


def _value(line: str):
    """The value of a `key = value  # comment` line, None if it does not read as TOML."""
    try:
        return next(iter(tomllib.loads(line).values()))
    except (tomllib.TOMLDecodeError, StopIteration):
        return None


def _literal(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(repr(float(v)) for v in value) + "]"
    return repr(float(value))


def write_choice(path: Path, benchmark: str, scale: str, stage: str, chosen, how: str = "", keep: dict | None = None,
                 setting: str = "lr", before=None) -> None:
    """Set the chosen rate(s) (setting "starts": init_kl_coefs; those that differ from `before`'s, when given), and
    the setting's note (`tuned`, `starts_tuned`) = how, in the benchmarks file's [<benchmark>.scales.<scale>.<stage>]
    table (made when missing), each key's line replaced (a note of the value it replaces) or added under the header;
    keep: {section: {key: value}} of other sections to pin as they were (the relatives that took [dpo]'s rates).
    Written atomically; the file must read back with exactly these values, else it is left as it was."""
    section = getattr(chosen, stage)
    keys = ["init_kl_coefs"] if setting == "starts" else rate_keys(section)
    values = {stage: {key: getattr(section, key) for key in keys  # before: the config as it stood; what it
                      if before is None or getattr(getattr(before, stage), key) != getattr(section, key)}}  # had, stays
    if how:
        values[stage][SETTINGS[setting]] = how
    values.update(keep or {})
    lines = path.read_text().splitlines()
    for table, items in values.items():
        where = [benchmark, "scales", scale, table]
        at = [i for i, line in enumerate(lines) if _header_path(line) == where]
        if not at:
            lines += ["", "[" + ".".join(_key(p) for p in where) + "]"]
            at = [len(lines) - 1]
        start = at[0]
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        for key, value in items.items():
            new = f"{key} = {_literal(value)}"
            found = next((i for i in range(start + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
            note = f"kept as it was before tuning [{stage}]" if table != stage else f"docs/tuning-{scale}.md"
            if found is None:
                lines.insert(start + 1, f"{new}  # {note}" if key not in SETTINGS.values() else new)
                end += 1
            elif key in SETTINGS.values():
                lines[found] = new
            elif _value(lines[found]) != value:  # an unchanged value keeps its line, comment and all
                lines[found] = f"{new}  # {note} (was: {lines[found].split('=', 1)[1].split('#')[0].strip()})"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    try:
        doc = read_toml(tmp)
        for table, items in values.items():
            got = doc[benchmark]["scales"][scale][table]
            if any(got.get(k) != v for k, v in items.items()):
                raise ValueError(f"[{benchmark}.scales.{scale}.{table}] does not read back as written")
    except Exception as e:  # never leave a file that does not read, or reads otherwise
        tmp.unlink()
        raise ConfigError(f"tune: the edited {path.name} would not read back ({e}); left unchanged") from e
    tmp.replace(path)
