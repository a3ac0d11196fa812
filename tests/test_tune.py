"""The tuning protocol: trials blind to the test prompts, the same budget per method, every trial logged, the choice
written back (pipelines/tune.py)."""

import dataclasses
import time
import tomllib

import pytest

from helpers import BASE_TOML, ROOT, cli, write_config
from pipelines import config, tune
from pipelines.config import ConfigError


def test_a_trial_is_the_method_alone_one_seed_on_the_tune_split_with_its_rates_scaled():
    cfg = config.load("imdb-sentiment", "tiny")
    trial = tune.trial_config(cfg, "dpo", 0.5)
    assert trial.methods == ["dpo"] and trial.seeds == 1 and trial.eval.prompt_split == "tune"
    assert trial.dpo.learning_rate == cfg.dpo.learning_rate * 0.5
    assert trial.dpo.learning_rates == [r * 0.5 for r in cfg.dpo.learning_rates]  # one per beta, all scaled
    assert trial.dpo.betas == cfg.dpo.betas and trial.eval.prompts == cfg.eval.prompts  # its sweep as in the benchmark
    assert tune.trial_config(cfg, "ppo", 2.0).ppo.learning_rate == cfg.ppo.learning_rate * 2
    starts = tune.trial_config(cfg, "ppo", 0.5, "starts").ppo  # the other setting: its starts, its rate as it is
    assert starts.init_kl_coefs == [c * 0.5 for c in cfg.ppo.init_kl_coefs] and starts.learning_rate == cfg.ppo.learning_rate
    one = config.load("imdb-sentiment", "micro")  # no list: init_kl_coef for every target, scaled
    assert tune.trial_config(one, "ppo", 2.0, "starts").ppo.init_kl_coefs == [one.ppo.init_kl_coef * 2] * len(
        one.ppo.target_kls)
    for setting in ("lr", "starts"):  # x1 is the config as it stands (one trial, lr-x1/, for both settings)
        assert tune.trial_config(one, "ppo", 1.0, setting).ppo == one.ppo
    assert cfg.eval.prompt_split == "eval"  # the benchmark itself never evaluates on the tune split


def test_trial_measures_choose_on_the_select_half_and_measure_on_the_other():
    """Two DPO checkpoints and the SFT model. On select, step 2 is the best within KL 5 (0.8 at KL 4); on the
    measured half it has 0.6 at KL 4.5: what is reported, not the measured half's better step 1."""
    def row(method, step, split, kl, reward):
        return {"method": method, "run": "r" if method != "sft" else "sft", "step": step, "split": split, "kl": kl,
                "reward": reward}

    rows = [row("sft", 0, "select", 0.0, 0.5), row("sft", 0, "test", 0.0, 0.4),
            row("dpo", 1, "select", 1.0, 0.6), row("dpo", 1, "test", 1.0, 0.9),
            row("dpo", 2, "select", 4.0, 0.8), row("dpo", 2, "test", 4.5, 0.6),
            row("ppo", 1, "select", 1.0, 0.99), row("ppo", 1, "test", 1.0, 0.99)]  # another method: not a candidate
    m = tune.trial_measures(rows, "dpo", [0.5, 5.0], max_kl=5.0)
    assert m["KL <= 5"] == (0.6, 4.5)
    assert m["KL <= 0.5"] == (0.4, 0.0)  # only the SFT model within
    # area: SFT best on [0, 1), step 1 on [1, 4), step 2 on [4, 5]: weights 0.2, 0.6, 0.2 of the measured rewards
    assert m["area"] == pytest.approx(0.2 * 0.4 + 0.6 * 0.9 + 0.2 * 0.6)
    assert m["reach"] == 4.0  # its furthest trained checkpoint on select (not the measured half's 4.5, not SFT)


def test_ppo_starts_are_chosen_per_target_by_where_the_last_checkpoint_lands():
    """Two targets, three trials. landing(): the last step of each run, KL averaged over the two halves, over the
    target. x1 misses both by more than 25% (0.6, 0.73); target 3 lands within at x2 only (0.91), target 6 at x0.5
    only (1.2); the chosen coefficients are those scales times the starts. Where x1 lands within 25%, it stays.""" 
    def rows(scale_kls):
        out = []
        for target, (kl_select, kl_test) in scale_kls.items():
            for step, frac in ((2, 1.5), (4, 1.0)):  # step 2 is not the last (though further): ignored
                out += [{"method": "ppo", "param": target, "step": step, "split": split, "kl": kl * frac, "n": n}
                        for split, kl, n in (("select", kl_select, 128), ("test", kl_test, 256))]
        return out + [{"method": "ppo-gt", "param": 3.0, "step": 9, "split": "test", "kl": 99.0, "n": 256}]  # other

    landed = {s: tune.landing(rows(k), "ppo") for s, k in
              ((0.5, {3.0: (4.0, 5.0), 6.0: (7.2, 7.2)}), (1.0, {3.0: (2.4, 1.5), 6.0: (4.4, 4.4)}),
               (2.0, {3.0: (2.6, 2.8), 6.0: (1.0, 1.0)}))}
    assert landed[1.0] == {3.0: pytest.approx((128 * 2.4 + 256 * 1.5) / 384 / 3), 6.0: pytest.approx(4.4 / 6)}
    assert landed[1.0][3.0] == pytest.approx(0.6)  # both halves, weighted by their prompts (not 0.65, their mean)
    section = dataclasses.replace(config.load("imdb-sentiment", "tiny").ppo, target_kls=[3.0, 6.0],
                                  init_kl_coefs=[0.3, 0.1])
    trials = [{"scale": s, "landing": landed[s]} for s in (0.5, 1.0, 2.0)]
    choice = tune.choose_starts(section, trials)
    assert choice["chosen"] == {3.0: 2.0, 6.0: 0.5} and choice["chosen_starts"] == [0.6, 0.05]
    kept = [{"scale": 0.5, "landing": {3.0: 1.0, 6.0: 1.3}}, {"scale": 1.0, "landing": {3.0: 1.2, 6.0: 0.7}},
            {"scale": 2.0, "landing": {3.0: 0.6, 6.0: 0.5}}]
    assert tune.choose_starts(section, kept)["chosen"] == {3.0: 1.0, 6.0: 0.5}  # 1.2: within, kept; 0.7: nearest
    edge = [{"scale": 0.5, "landing": {3.0: 1.0, 6.0: 1.0}}, {"scale": 1.0, "landing": {3.0: 0.75, 6.0: 1.25}}]
    assert tune.choose_starts(section, edge)["chosen"] == {3.0: 1.0, 6.0: 1.0}  # the report's band, edges in
    with pytest.raises(ConfigError, match="target KL 6"):
        tune.choose_starts(section, [{"scale": 1.0, "landing": {3.0: 1.0}}])
    page = tune.tuning_page("## ppo\nlr\n\n", {"method": "ppo", "scale": "tiny", "date": "d", "setting": "starts",
                                                  "budgets": [5.0], "area_max_kl": 10.0, **choice,
                                                  "trials": [{**t, "rates": "c", "train_seconds": 1.0,
                                                              "measures": {"KL <= 5": None, "area": 0.5}}
                                                             for t in trials]})
    assert "## ppo\nlr" in page and "## ppo-starts" in page and "chosen per target: KL 3: x2, KL 6: x0.5" in page
    assert "| 2 | c | 1 | none within | 0.500 | - | 0.91 | 0.17 |" in page


def test_the_rate_chosen_is_the_best_front_area_among_trials_that_reach_the_largest_budget():
    """x0.5 has the best area but stops at KL 9.98 on select (the tiny DPO trials of 2026-12-07): the verdict would not
    compare it at KL 10, so x1 (area 0.677, reach 24) is chosen; with no trial reaching, the best area of all."""
    def trial(scale, area, reach):
        return {"scale": scale, "rates": f"x{scale}", "measures": {"area": area, "reach": reach}}

    trials = [trial(0.5, 0.713, 9.98), trial(1.0, 0.677, 24.1), trial(2.0, 0.668, 45.1), trial(4.0, None, None)]
    assert tune.choose_rate("dpo", trials, 10.0, 10.0) == (trials[1], True)
    assert tune.choose_rate("dpo", trials[:1] + trials[3:], 10.0, 10.0) == (trials[0], False)
    assert tune.choose_rate("dpo", [trial(0.5, 0.6, 12.0), trial(2.0, 0.6, 12.0), trial(1.0, 0.6, 12.0)], 10.0,
                            10.0)[0]["scale"] == 1.0  # a tie: nearer x1
    with pytest.raises(ConfigError, match="no trial has a front area"):
        tune.choose_rate("dpo", trials[3:], 10.0, 10.0)


def test_the_page_keeps_other_methods_sections_and_the_choice_is_written_in_place(tmp_path):
    record = {"method": "dpo", "scale": "tiny", "date": "2026-12-07", "chosen": 2.0, "chosen_rates": "lr",
              "budgets": [5.0], "area_max_kl": 10.0,
              "trials": [{"scale": s, "rates": f"x{s}", "train_seconds": 1.0, "measures": {"KL <= 5": (0.5, 4.0),
                                                                                            "area": a}}
                         for s, a in ((0.5, 0.4), (2.0, 0.6))]}
    page = tune.tuning_page("", {**record, "method": "ppo"})
    page = tune.tuning_page(page, record)
    page = tune.tuning_page(page, record)  # tuned again: replaced, not added
    assert page.count("## dpo") == 1 and page.count("## ppo") == 1 and page.count("| 0.5 | x0.5 | 1 | 0.500 (4.00) |") == 2
    path = tmp_path / "benchmarks.toml"
    untuned = tomllib.loads(BASE_TOML)  # tiny as before any tuning: the relatives take [dpo]'s / [unlikelihood]'s rates
    tiny = untuned["imdb-sentiment"]["scales"]["tiny"]
    for relative in ("ipo", "slic", "rdpo", "cpo", "kto", "unlikelihood_token"):
        for key in ("learning_rate", "learning_rates", "betas"):
            if key == "learning_rate" or relative not in ("ipo", "slic"):  # their own sweeps stay
                tiny.get(relative, {}).pop(key, None)
    write_config(path, None, untuned)
    path.write_text(path.read_text().replace("[imdb-sentiment.scales.tiny.dpo]\n",  # a comment to keep beside a value
                                             "[imdb-sentiment.scales.tiny.dpo]\n# the rates\n"))
    cfg = config.load("imdb-sentiment", "tiny", path)
    keep = tune.inheriting_rates(cfg, "dpo")
    assert keep["kto"] == {"learning_rate": cfg.dpo.learning_rate, "learning_rates": cfg.dpo.learning_rates,
                           "betas": cfg.dpo.betas}  # the rates with the runs they were set for
    assert "learning_rates" not in keep["ipo"]  # its own (empty) list: not DPO's
    tune.write_choice(path, "imdb-sentiment", "tiny", "dpo", tune.trial_config(cfg, "dpo", 2.0), 'x2 "of" 3', keep)
    tune.write_choice(path, "imdb-sentiment", "tiny", "rloo", tune.trial_config(cfg, "rloo", 0.5))
    after = config.load("imdb-sentiment", "tiny", path)
    assert after.dpo.learning_rate == cfg.dpo.learning_rate * 2 and after.dpo.learning_rates == \
        [r * 2 for r in cfg.dpo.learning_rates]
    assert after.rloo.learning_rate == cfg.rloo.learning_rate * 0.5 and after.ppo == cfg.ppo  # nothing else moved
    assert after.dpo.tuned == 'x2 "of" 3' and after.ipo.tuned == "" and after.rloo.tuned == ""  # never inherited
    assert all(getattr(after, m) == getattr(cfg, m) for m in ("ipo", "slic", "rdpo", "kto", "cpo"))  # relatives kept
    new = f"learning_rates = {tune._literal(after.dpo.learning_rates)}  # docs/tuning-tiny.md (was: ["  # and what it
    assert sum(line.startswith(new) for line in path.read_text().splitlines()) == 1                   # replaced
    pinned = tune.inheriting_rates(cfg, "unlikelihood")  # Welleck's form takes [unlikelihood]'s rate
    tune.write_choice(path, "imdb-sentiment", "tiny", "unlikelihood", tune.trial_config(cfg, "unlikelihood", 0.5), "",
                      pinned)
    assert pinned and "# kept as it was before tuning [unlikelihood]" in path.read_text()
    dotted = tmp_path / "dotted.toml"  # a scale name with a dot is a quoted key in a header
    dotted.write_text(BASE_TOML.replace("[imdb-sentiment.scales.micro", '[imdb-sentiment.scales."v1.5"')
                      .replace('base_scale = "micro"', 'base_scale = "v1.5"'))
    micro = config.load("imdb-sentiment", "v1.5", dotted)
    tune.write_choice(dotted, "imdb-sentiment", "v1.5", "ppo", tune.trial_config(micro, "ppo", 0.5))
    assert config.load("imdb-sentiment", "v1.5", dotted).ppo.learning_rate == micro.ppo.learning_rate * 0.5
    assert "v1" not in tomllib.loads(dotted.read_text())["imdb-sentiment"]["scales"]
    assert tomllib.loads(path.read_text())["imdb-sentiment"]["scales"]["tiny"]["dpo"]["max_steps"] == 0
    starts = tune.trial_config(cfg, "ppo", 2.0, "starts")
    tune.write_choice(path, "imdb-sentiment", "tiny", "ppo", starts, "per target", setting="starts")
    ppo = config.load("imdb-sentiment", "tiny", path).ppo
    assert ppo.init_kl_coefs == starts.ppo.init_kl_coefs and ppo.starts_tuned == "per target"
    assert ppo.learning_rate == cfg.ppo.learning_rate and ppo.tuned == cfg.ppo.tuned  # the rate and its note kept
    line = next(x for x in path.read_text().splitlines() if x.startswith("init_kl_coefs"))
    tune.write_choice(path, "imdb-sentiment", "tiny", "ppo", starts, "again", setting="starts")
    assert line in path.read_text().splitlines()  # the same value again: its line (and its comment) as it was
    kept = config.load("imdb-sentiment", "v1.5", dotted)  # no init_kl_coefs: x1 kept writes the note alone
    tune.write_choice(dotted, "imdb-sentiment", "v1.5", "ppo", kept, "kept", setting="starts", before=kept)
    assert config.load("imdb-sentiment", "v1.5", dotted).ppo == dataclasses.replace(kept.ppo, starts_tuned="kept")


def test_bad_tune_arguments_are_one_line_and_write_nothing(tmp_path):
    for args, word in ((["--method", "sft"], "allowed: dpo"), (["--method", "dpo", "--scales", "0.5,x"], "--scales"),
                       (["--method", "dpo", "--scales", "0,1"], "--scales"),
                       (["--method", "ppo", "--setting", "beta"], "allowed: lr, starts"),
                       (["--method", "dpo", "--setting", "starts"], "allowed: ppo ("),
                       (["--method", "ppo-gt", "--setting", "starts"], "allowed: ppo ("),
                       (["--method", "ppo", "--setting", "starts", "--scales", "0.5,2"], "include 1")):
        proc = cli("tune", "imdb-sentiment", "--scale", "micro", *args, "--docs", str(tmp_path), run_dir=tmp_path)
        assert proc.returncode == 2 and word in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="allowed"):
        tune.run(config.load("imdb-sentiment", "micro"), "best-of-n", (1.0,), {}, None, None, tmp_path)


@pytest.mark.slow
def test_tuning_dpo_and_ppo_starts_at_micro_run_trials_on_the_tune_split_and_write_the_choice(tmp_path):
    """The command as a user types it (micro; two trials to save time): DPO's trials, each evaluated on tune prompts
    only (its eval's config says so), every trial in tuning-micro.md, the choice written into the benchmarks file
    given; then PPO's start coefficients from the same shared stages."""
    path = tmp_path / "benchmarks.toml"
    path.write_text(BASE_TOML)
    docs = tmp_path / "docs"
    docs.mkdir()
    proc = cli("--config", str(path), "tune", "imdb-sentiment", "--scale", "micro", "--method", "dpo", "--docs",
               str(docs), "--write", "--scales", "0.5,2", run_dir=tmp_path / "runs", check=True)
    page = (docs / "tuning-micro.md").read_text()
    assert "## dpo" in page and all(f"\n| {s} |" in page for s in ("0.5", "2")) and "\n| 1 |" not in page
    root = tmp_path / "runs" / "imdb-sentiment" / "micro-tune"
    for s in ("0.5", "2"):
        manifest = (root / "dpo" / f"lr-x{s}" / "eval" / "manifest.json").read_text()
        assert '"prompt_split": "tune"' in manifest
    chosen = float(page.split("chosen: lr x")[1].split(" ")[0])
    base = config.load("imdb-sentiment", "micro")
    tuned = config.load("imdb-sentiment", "micro", path).dpo
    assert tuned.learning_rate == pytest.approx(base.dpo.learning_rate * chosen)
    assert tuned.tuned.endswith("of x0.5, x2 on the tune split, one seed (docs/tuning-micro.md)")
    assert "chose lr x" in proc.stderr
    assert (ROOT / "benchmarks.toml").read_text() == BASE_TOML  # the repository's own file untouched

    # PPO's starts (`--setting starts`), from the same shared stages: x1 is the config as it stands (lr-x1/, where a
    # learning-rate trial of x1 runs too), each target's landing on the page, one start per target written
    cli("--config", str(path), "tune", "imdb-sentiment", "--scale", "micro", "--method", "ppo", "--setting", "starts",
        "--docs", str(docs), "--write", "--scales", "1,4", run_dir=tmp_path / "runs", check=True)
    assert sorted(p.name for p in (root / "ppo").iterdir()) == ["lr-x1", "starts-x4"]
    page = (docs / "tuning-micro.md").read_text()
    assert "## dpo" in page and "## ppo-starts" in page
    assert all(f" KL / target {t:g} |" in page for t in base.ppo.target_kls)
    chosen = [float(x.split(": x")[1]) for x in page.split("chosen per target: ")[1].split(" (")[0].split(", ")]
    ppo = config.load("imdb-sentiment", "micro", path).ppo
    assert ppo.start_coefs() == pytest.approx([c * x for c, x in zip(base.ppo.start_coefs(), chosen)])
    assert ppo.starts_tuned.startswith(time.strftime("%Y-%m-%d")) and ppo.learning_rate == base.ppo.learning_rate


def test_the_report_says_which_methods_were_tuned_on_the_tune_split():
    report = __import__("importlib").import_module("report.__main__")
    line = report.tuning_line({"dpo": {"tuned": "x1 of x0.5, x1, x2"}, "ppo": {"tuned": ""}}, ["dpo", "ppo", "ppo-gt"],
                              "tiny")
    assert "chosen on the tune split: DPO (x1 of x0.5, x1, x2)" in line and "Not tuned on the tune split" in line
    assert "PPO, PPO-GT;" in line and "docs/tuning-tiny.md" in line
    every = report.tuning_line({"dpo": {"tuned": "x1"}}, ["dpo"], "tiny")
    assert "Every method's learning rate was chosen there." in every
    assert "DPO's per-beta rule (one learning rate per beta) is an earlier session's" in every  # not chosen there
    assert "start KL coefficients" not in every  # no PPO in the run
    both = report.tuning_line({"ppo": {"tuned": "x1", "starts_tuned": "x1 where it lands"}}, ["ppo"], "tiny")
    assert "PPO's start KL coefficients went through the tune split (x1 where it lands); those it kept were first " \
           "set on test-prompt KL" in both and "per-beta" not in both
    assert "were not checked on the tune split" in report.tuning_line({"ppo": {"tuned": "x1"}}, ["ppo"], "tiny")
