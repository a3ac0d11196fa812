"""imdb-scaling: a ladder of rungs, each the whole comparison, then scaling.csv / .png / .md across them."""

import csv
import importlib
import json

import pytest
from scipy import stats

from helpers import cli, config_data, record_in_manifest, scale_overrides, write_config
from core.verdict import SUMMARY_FORMAT
from pipelines.config import ConfigError, load_ladder

scaling = importlib.import_module("scaling.__main__")


def test_micro_ladder_end_to_end(tmp_path):
    """`python -m pipelines run imdb-scaling --scale micro`: two rungs of growing size from one shared ground
    truth, each a full comparison, and the ladder's outputs with every method and DPO - PPO at every measure."""
    cli("run", "imdb-scaling", "--scale", "micro", run_dir=tmp_path, check=True)
    root = tmp_path / "imdb-scaling" / "micro"
    for name in ("scaling.csv", "scaling.png", "scaling.pdf", "scaling.md"):
        assert (root / name).is_file(), name
    assert (root / "ground_truth" / "manifest.json").is_file()
    assert not (root / "a" / "ground_truth").exists() and not (root / "b" / "ground_truth").exists()  # shared
    gt_identity = json.loads((root / "ground_truth" / "manifest.json").read_text())["identity"]
    for rung in ("a", "b"):
        assert json.loads((root / rung / "pairs" / "manifest.json").read_text())["inputs"]["ground_truth"] == \
            gt_identity
    jobs = [json.loads((root / r / "dpo" / "job.json").read_text()) for r in ("a", "b")]
    assert jobs[0]["tracking"]["group"] == jobs[1]["tracking"]["group"]  # one wandb group, the rung in each run
    assert [j["tracking"]["rung"] for j in jobs] == ["a", "b"]

    rows = list(csv.DictReader(open(root / "scaling.csv")))
    measures = ["KL <= 0.02", "KL <= 0.05", "KL <= 0.1", "front area, KL 0-0.1"]  # micro's budgets
    for rung in ("a", "b"):
        for method in ("dpo", "ppo", "ppo-gt", "dpo - ppo"):
            assert [r["measure"] for r in rows if r["rung"] == rung and r["method"] == method] == measures
    params = {r["rung"]: int(r["parameters"]) for r in rows}
    assert params["b"] > 3 * params["a"]  # 2 x 64 against 1 x 32
    for r in rows:
        assert float(r["low"]) <= float(r["reward"]) <= float(r["high"])
    for rung in ("a", "b"):  # each interval's variance as the ladder reads it: one seed, a normal interval
        summary = json.loads((root / rung / "report" / "summary.json").read_text())
        for iv in summary["comparisons"]["dpo - ppo"].values():
            half = stats.norm.ppf(0.975) * iv["variance"] ** 0.5
            assert iv["df"] is None and iv["high"] - iv["low"] == pytest.approx(2 * half)
    md = (root / "scaling.md").read_text()
    said = [line for line in md.splitlines() if line.startswith("- At ") and "DPO - PPO" in line]
    assert len(said) == len(measures)
    for line, measure in zip(said, measures):  # seeds = 1 at micro: no word; or a side does not cover the budget
        covered = all(not json.loads((root / r / "report" / "summary.json").read_text())["comparisons"]["dpo - ppo"]
                      [measure]["not_covered"] for r in ("a", "b"))
        assert ("one training seed" in line) if covered else ("not compared (" in line)
    for r in rows:  # scaling.csv says it too
        summary = json.loads((root / r["rung"] / "report" / "summary.json").read_text())
        entry = summary["comparisons" if " - " in r["method"] else "methods"][r["method"]][r["measure"]]
        assert r["not_covered"] == (entry["not_covered"] or "")
    # a second run trains nothing and writes the same table
    before = (root / "scaling.csv").read_text()
    proc = cli("run", "imdb-scaling", "--scale", "micro", run_dir=tmp_path, check=True)
    assert "runs because" not in proc.stderr and (root / "scaling.csv").read_text() == before
    # a rung's summary.json of another format, recorded in its manifest (a folder from another version): that
    # rung's report is made again before the scaling stage reads it, and the table is the same
    report = root / "a" / "report"
    summary = json.loads((report / "summary.json").read_text())
    (report / "summary.json").write_text(json.dumps({**summary, "format": SUMMARY_FORMAT + 1}))
    record_in_manifest(report, "summary.json")
    proc = cli("run", "imdb-scaling", "--scale", "micro", run_dir=tmp_path, check=True)
    assert f"rung a: {report / 'summary.json'} has format {SUMMARY_FORMAT + 1}; this version reads format " \
           f"{SUMMARY_FORMAT}" in proc.stderr and "its report runs again" in proc.stderr
    assert json.loads((report / "summary.json").read_text())["format"] == SUMMARY_FORMAT
    assert (root / "scaling.csv").read_text() == before


@pytest.mark.parametrize("small, large, seeds, word", [
    (0.00, 0.20, 3, "DPO gains on PPO"), (0.10, -0.15, 3, "PPO gains on DPO"), (0.00, 0.02, 3, "not resolved"),
    (0.00, 0.20, 1, "one training seed")])
def test_trend_sentence_says_which_way_the_gap_moves(small, large, seeds, word):
    text = scaling.trend_sentence("KL <= 5", two_rungs(small, large, seeds), 0.95)
    assert word in text and f"{large - small:+.3f}" in text and "0.25M" in text and "4.00M" in text


def two_rungs(small, large, seeds, not_covered=(None, None)) -> list[dict]:
    z = stats.norm.ppf(0.975)  # each rung's interval a normal one, half-width 0.05
    iv = lambda e, why: {"estimate": e, "low": e - 0.05, "high": e + 0.05, "seeds": seeds,  # noqa: E731
                         "variance": (0.05 / z) ** 2, "df": None, "not_covered": why}
    return [{"parameters": p, "summary": {"comparisons": {"dpo - ppo": {"KL <= 5": iv(e, why)}}}}
            for p, e, why in ((250_000, small, not_covered[0]), (4_000_000, large, not_covered[1]))]


def test_a_rung_whose_side_does_not_cover_the_budget_is_not_compared():
    text = scaling.trend_sentence("KL <= 5", two_rungs(0.0, 0.2, 3, (None, "DPO did not reach KL 5")), 0.95)
    assert text == "At KL <= 5: DPO - PPO not compared (DPO did not reach KL 5 at 4.00M)."


def micro_ladder(**keys) -> dict:
    """Overrides for imdb-scaling's micro ladder (for helpers.write_config)."""
    return scale_overrides("micro", "imdb-scaling", **keys)


RUNG_B_SFT = {"n_layer": 2, "n_embd": 64, "n_head": 2}  # the shipped micro ladder's rung b


@pytest.mark.parametrize("overrides, message", [
    (micro_ladder(rungs={"b": None}), "at least 2"),  # None: rung b removed
    (micro_ladder(base_scale="nano"), "base_scale"),
    ({"imdb-scaling": {"protocol": "imdb-scaling"}}, "protocol"),
    (micro_ladder(rungs={"b": {"sft": {"n_head": 3}}}), "rungs.b: sft.n_head (3) must divide"),
    (micro_ladder(rungs={"b": {"data": {"eval_reviews": 30}}}), "[data] or [ground_truth] differ"),
    (micro_ladder(rungs={"b": None, "scaling": {"sft": RUNG_B_SFT}}), "a ladder's own folder"),  # b renamed
    # a ladder compares the same methods at every rung
    (micro_ladder(rungs={"b": {"methods": ["dpo", "ppo"]}}), "differ from rung a's ['dpo', 'ppo', 'ppo-gt']"),
])
def test_a_bad_ladder_is_a_one_line_error(tmp_path, overrides, message):
    shipped = config_data()["imdb-scaling"]  # what the overrides change
    assert shipped["protocol"] == "imdb-sentiment" and shipped["scales"]["micro"]["base_scale"] == "micro"
    assert shipped["scales"]["micro"]["rungs"] == {"a": {"sft": {}}, "b": {"sft": RUNG_B_SFT}}
    path = write_config(tmp_path / "benchmarks.toml", overrides)
    with pytest.raises(ConfigError) as e:
        load_ladder("imdb-scaling", "micro", path)
    assert message in str(e.value) and "\n" not in str(e.value)
