"""The typed config: every scale resolves; bad values are one-line errors naming the key, exit 2, nothing written."""

import dataclasses
import sys

import pytest

from helpers import BASE_TOML, cli, scale_overrides, toml_text, write_config
from pipelines import config, graph, stages
from core.config import stable_hash
from pipelines.config import ConfigError


@pytest.mark.parametrize("scale", config.scale_names(config.read_toml(), "imdb-sentiment"))
def test_every_scale_resolves(scale):
    cfg = config.load("imdb-sentiment", scale)
    assert cfg.scale == scale and cfg.dpo.betas


def test_paper_scale_is_the_protocol():
    cfg = config.load("imdb-sentiment", "paper")
    assert cfg.sft.model == "gpt2-large" and cfg.data.source == "hf:stanfordnlp/imdb"
    assert cfg.ground_truth.model == "siebert/sentiment-roberta-large-english"
    assert cfg.dpo.betas == [0.05, 0.1, 1.0, 5.0] and cfg.dpo.optimizer == "rmsprop"
    assert (cfg.dpo.learning_rate, cfg.dpo.warmup_steps, cfg.dpo.batch_size) == (1e-6, 150, 64)
    assert (cfg.data.prompt_min_tokens, cfg.data.prompt_max_tokens, cfg.pairs.samples_per_prompt) == (2, 8, 4)


def test_default_scale_is_tiny():
    assert config.load("imdb-sentiment").scale == "tiny"


BAD = [
    ("[imdb-sentiment.scales.bad.dpo]\nbetas = [0.0]", "imdb-sentiment.dpo.betas[0] = 0.0: must be > 0"),
    ("[imdb-sentiment.scales.bad.dpo]\nbetas = [-1.0, 1.0]", "dpo.betas[0] = -1.0: must be > 0"),
    ("[imdb-sentiment.scales.bad.dpo]\nbetas = []", "dpo.betas is empty"),
    ("[imdb-sentiment.scales.bad.dpo]\nbetas = 0.1", "dpo.betas = 0.1: expected a list of a number"),
    ("[imdb-sentiment.scales.bad.dpo]\nbetas = [0.1, 0.1]", "dpo.betas has repeated values [0.1, 0.1]: each is one run"),
    ("[imdb-sentiment.scales.bad.dpo]\nbeta = 0.1", "unknown key imdb-sentiment.dpo.beta; allowed keys: optimizer, "
     "learning_rate, warmup_steps, batch_size, max_steps, eval_every, early_checkpoints, tuned, betas"),
    ("[imdb-sentiment.scales.bad.dpo]\nlearning_rates = [1e-4]", "dpo.learning_rates has 1 values for 4 betas; "
     "allowed: one per beta, or none"),
    ("[imdb-sentiment.scales.bad.ppo]\ninit_kl_coefs = [0.1, 0.2]", "ppo.init_kl_coefs has 2 values for 4 "
     "target_kls; allowed: one per target, or none"),
    ("[imdb-sentiment.scales.bad.ppo]\ninit_kl_coefs = [0.1, 0.2, 0.3, -0.1]", "ppo.init_kl_coefs[3] = -0.1: must be >= 0"),
    ("[imdb-sentiment.scales.bad.unlikelihood]\nalphas = []", "unlikelihood.alphas is empty: give at least one value"),
    ("[imdb-sentiment.scales.bad.unlikelihood]\nalphas = [0.1, 0.1]", "unlikelihood.alphas has repeated values"),
    ("[imdb-sentiment.scales.bad.preferred_ft]\nseeds = [0, 1]", "unknown key imdb-sentiment.preferred_ft.seeds"),
    ("[imdb-sentiment.scales.bad]\nseeds = 0", "imdb-sentiment.seeds = 0: must be >= 1"),
    ("[imdb-sentiment.scales.bad]\nreseed_shared = 1", "imdb-sentiment.reseed_shared = 1: expected true or false"),
    ("[imdb-sentiment.scales.bad]\nseeds = 2.5", "imdb-sentiment.seeds = 2.5: expected an integer"),
    ("[imdb-sentiment.scales.bad.eval]\nselect_prompts = 0", "eval.select_prompts = 0: must be > 0"),
    ("[imdb-sentiment.scales.bad.report]\nsamples = 20", "report.samples = 20: must be >= 0 and <= 8"),
    ("[imdb-sentiment.scales.bad.dpo]\nbatch_size = \"8\"", "dpo.batch_size = '8': expected an integer"),
    ("[imdb-sentiment.scales.bad.dpo]\nbatch_size = 8.5", "dpo.batch_size = 8.5: expected an integer"),
    ("[imdb-sentiment.scales.bad.dpo]\noptimizer = \"sgd\"", "dpo.optimizer = 'sgd': allowed values are 'adamw'"),
    ("[imdb-sentiment.scales.bad.data]\nprompt_min_tokens = 9", "prompt range needs min <= max"),
    ("[imdb-sentiment.scales.bad.pairs]\nprompts = -3", "pairs.prompts = -3: must be > 0"),
    ("[imdb-sentiment.scales.bad.pairs]\nsamples_per_prompt = 1", "pairs.samples_per_prompt = 1: must be >= 2"),
    ("[imdb-sentiment.scales.bad.ground_truth]\nkind = \"vibes\"", "ground_truth.kind = 'vibes': allowed values"),
    ("[imdb-sentiment.scales.bad.sft]\nn_head = 3", "sft.n_head (3) must divide sft.n_embd (128)"),
    ("[imdb-sentiment.scales.bad]\nfoo = 1", "unknown key imdb-sentiment.foo"),
    ("[imdb-sentiment.scales.bad]\ndpo = 3", "imdb-sentiment.dpo must be a table"),
    ("[imdb-sentiment.scales.bad.sft]\nwarmup_ratio = 1.5", "sft.warmup_ratio = 1.5: must be >= 0 and <= 1"),
    ("[imdb-sentiment.scales.bad.eval]\nsampler = \"vlm\"", "eval.sampler = 'vlm': allowed values are 'auto', 'hf', 'vllm'"),
    ("[imdb-sentiment.scales.bad]\nmethods = [\"dpo\", \"rlhf\"]", "imdb-sentiment.methods[1] = 'rlhf': allowed values "
     "are 'dpo', 'ppo', 'ppo-gt'"),
    ("[imdb-sentiment.scales.bad]\nmethods = []", "imdb-sentiment.methods is empty"),
    ("[imdb-sentiment.scales.bad]\nmethods = [\"ipo\", \"ipo\"]", "methods has repeated values ['ipo', 'ipo']"),
    ("[imdb-sentiment.scales.bad.ppo]\nmethods = [\"ppo\"]", "unknown key imdb-sentiment.ppo.methods"),
    ("[imdb-sentiment.scales.bad.ipo]\nbetas = []", "ipo.betas is empty"),
    ("[imdb-sentiment.scales.bad.slic]\nlearning_rates = [1e-4]", "slic.learning_rates has 1 values for 4 betas"),
    ("[imdb-sentiment.scales.bad.rdpo]\nlabel_smoothing = 0.5", "rdpo.label_smoothing = 0.5: must be > 0 and <= 0.49"),
    ("[imdb-sentiment.scales.bad.best_of_n]\nns = [1, 128]", "best_of_n.ns has N = 128 > best_of_n.samples = 64"),
    ("[imdb-sentiment.scales.bad.best_of_n]\nns = [0]", "best_of_n.ns[0] = 0: must be > 0"),
    ("[imdb-sentiment.scales.bad.ppo]\nearly_checkpoints = [2, 300]", "ppo.early_checkpoints [2, 300] has a step past "
     "ppo.steps (100); allowed: steps 1 to 100"),
    ("[imdb-sentiment.scales.bad.dpo]\neval_every = 5\nearly_checkpoints = [2, 5]", "dpo.early_checkpoints [2, 5] has a "
     "step at or past dpo.eval_every (5); allowed: steps 1 to 4"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_config_is_a_one_line_error(tmp_path, override, message):
    path = write_config(tmp_path / "bench.toml", override)  # the table parsed, merged into the shipped file's data
    with pytest.raises(ConfigError) as e:
        config.load("imdb-sentiment", "bad", path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args,message", [
    (["run", "imdb-sentiment", "--scale", "huge"], "unknown scale 'huge' for imdb-sentiment; allowed: tiny"),
    (["run", "imdb-cats"], "unknown benchmark 'imdb-cats'"),
    (["run", "imdb-sentiment", "--scale", "micro", "--stages", "sft,ppo2"], "unknown stage 'ppo2'"),
    (["run", "imdb-sentiment", "--scale", "micro", "--stages", "dpo"], "stage dpo needs sft, pairs"),
    (["run", "imdb-sentiment", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "imdb-sentiment", "--scale", "micro", "--seeds", "0"], "--seeds = 0: must be >= 1"),
    (["run", "imdb-sentiment", "--seeds", "x"], "argument --seeds: invalid int value: 'x'"),
    (["run", "imdb-sentiment", "--scale", "micro", "--methods", "dpo,rlhf"], "--methods = 'rlhf': allowed values are"),
    (["run", "imdb-sentiment", "--scale", "micro", "--methods", ","], "--methods is empty"),
    (["run", "imdb-sentiment", "--scale", "micro", "--stages", "ipo"], "stage ipo trains none of this run's methods "
     "(dpo, ppo, ppo-gt, unlikelihood, preferred-ft); add ipo to methods"),
    (["--config", "/nonexistent.toml", "show", "imdb-sentiment"], "config file /nonexistent.toml not found"),
])
def test_bad_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    proc = cli(*args, run_dir=tmp_path / "runs")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))


def test_methods_choose_the_stages_and_the_relatives_take_dpos_settings():
    """The default is the paper's methods; 'all' every one; a method's stage runs only when it is chosen, and eval
    and report wait only for the chosen ones. A DPO relative's unset keys are [dpo]'s."""
    from core.methods import METHODS, PAPER

    cfg = config.load("imdb-sentiment", "tiny")
    assert cfg.methods == list(PAPER) == ["dpo", "ppo", "ppo-gt", "unlikelihood", "preferred-ft"]
    paper = graph.stages(cfg)
    assert "ipo" not in paper and "best_of_n" not in paper and "ipo" not in paper["eval"].needs
    assert graph.stage_config(cfg, paper["ppo"])["methods"] == ["ppo", "ppo-gt"]
    everything = config.with_methods(cfg, ["all"])
    assert everything.methods == list(METHODS)
    assert {"ipo", "slic", "rdpo", "best_of_n"} <= set(graph.stages(everything)["report"].needs)
    only_gt = config.with_methods(cfg, ["dpo", "ppo-gt"])
    assert graph.stage_config(only_gt, graph.stages(only_gt)["ppo"])["methods"] == ["ppo-gt"]
    assert "unlikelihood" not in graph.stages(only_gt)
    trained = ("optimizer", "warmup_steps", "batch_size", "max_steps", "eval_every")
    assert all(getattr(cfg.rdpo, k) == getattr(cfg.dpo, k) for k in (*trained, "betas"))
    assert cfg.ipo.betas != cfg.dpo.betas and cfg.ipo.learning_rates == []  # its own sweep: not DPO's rates
    assert all(getattr(cfg.ipo, k) == getattr(cfg.dpo, k) for k in trained)
    # rates too, where [dpo]'s were not tuned (tiny writes out the relatives' rates as they were before tuning)
    paper = config.load("imdb-sentiment", "paper")
    assert all(getattr(paper.rdpo, k) == getattr(paper.dpo, k) for k in ("learning_rate", "learning_rates"))
    for relative in (cfg.rdpo, cfg.cpo, cfg.kto):  # tiny writes them out: rates and the betas they were set for
        assert len(relative.learning_rates) == len(relative.betas) == len(cfg.dpo.betas)
    assert all(getattr(cfg.slic, k) == getattr(cfg.dpo, k) for k in trained)


def test_a_relatives_own_learning_rate_is_not_overridden_by_dpos_per_beta_rates(tmp_path):
    overrides = scale_overrides("bad", dpo={"learning_rates": [1e-4, 1e-4, 1e-5, 1e-6]}, rdpo={"learning_rate": 1e-6})
    path = write_config(tmp_path / "bench.toml", overrides)
    cfg = config.load("imdb-sentiment", "bad", path)
    assert cfg.dpo.learning_rates and cfg.rdpo.learning_rates == [] and cfg.rdpo.learning_rate == 1e-6
    assert cfg.rdpo.betas == cfg.dpo.betas and cfg.rdpo.max_steps == cfg.dpo.max_steps


def test_bad_source_is_refused_before_any_stage(tmp_path):
    path = write_config(tmp_path / "bench.toml", scale_overrides("bad", data={"source": "jsonl:/no/such/dir"}))
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "bad", run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and "folder /no/such/dir not found" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))


@pytest.mark.parametrize("installed", [False, True])
def test_auto_sampler_is_resolved_into_the_config_hash(monkeypatch, installed):
    """"auto" becomes the sampler that will run: vLLM's draws differ from ours, so its samples are a new job."""
    monkeypatch.setattr(stages, "vllm_installed", lambda: installed)
    cfg = config.load("imdb-sentiment", "micro")
    for name in ("pairs", "eval"):
        stage_cfg = graph.stage_config(cfg, stages.STAGES[name])
        assert stage_cfg[name]["sampler"] == ("vllm" if installed else "hf")
        # explicit "hf" is the same job as "auto" without vLLM, whatever is installed
        hf = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), sampler="hf")})
        same = stable_hash(graph.stage_config(hf, stages.STAGES[name])) == stable_hash(stage_cfg)
        assert same is not installed


def test_a_stage_that_samples_with_vllm_runs_in_one_process():
    launch, stage = graph.Launch(processes=4), stages.STAGES["eval"]
    assert launch.launches(stage, {"eval": {"sampler": "hf"}})
    assert launch.command(stage, {"eval": {"sampler": "vllm"}}) == [sys.executable, "-m", "eval"]
    assert not launch.launches(stage, {"eval": {"sampler": "vllm"}})
    best_of_n = stages.STAGES["best_of_n"]  # samples with eval's sampler
    assert launch.launches(best_of_n, {"eval": {"sampler": "hf"}, "best_of_n": {"ns": [1]}})
    assert not launch.launches(best_of_n, {"eval": {"sampler": "vllm"}, "best_of_n": {"ns": [1]}})


def test_vllm_sampler_without_vllm_is_refused_before_any_stage(tmp_path, monkeypatch):
    if stages.vllm_installed():
        pytest.skip("vLLM is installed here")
    path = write_config(tmp_path / "bench.toml", scale_overrides("bad", pairs={"sampler": "vllm"}))
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "bad", run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "pairs.sampler = 'vllm' but vLLM is not installed" in proc.stderr and "VLLM=1" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


BAD += [
    ("[imdb-sentiment.scales.bad]\nseed = 4294967296", "imdb-sentiment.seed = 4294967296: must be >= 0 and <= 4294967295"),
    ("[imdb-sentiment.scales.bad]\nseeds = 101", "imdb-sentiment.seeds = 101: must be >= 1 and <= 100"),
    ("[imdb-sentiment.scales.bad.sft]\nepochs = inf", "sft.epochs = inf: expected a finite number"),
    ("[imdb-sentiment.scales.bad.dpo]\nlearning_rate = nan", "dpo.learning_rate = nan: expected a finite number"),
    ("[imdb-sentiment.scales.bad.eval]\nprompts = 1001", "eval.prompts + eval.select_prompts (1001 + 500) > "
     "data.eval_reviews (1500)"),
]


@pytest.mark.parametrize("table,name", [('[imdb-sentiment.scales."../../escape"]', "../../escape"),
                                        ('[imdb-sentiment.scales."/tmp/abs"]', "/tmp/abs"),
                                        ('[imdb-sentiment.scales.".."]', ".."),
                                        ('["../evil".scales.x]\n[imdb-sentiment.scales.x]', "../evil")])
def test_a_name_that_would_leave_the_run_folder_is_refused(tmp_path, table, name):
    """Benchmark and scale names become folders under RUN_DIR: '..', '/' or a leading '.' never reach the disk."""
    path = write_config(tmp_path / "bench.toml", table)
    scale = "x" if name == "../evil" else name
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", scale, run_dir=tmp_path / "r" / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"name {name!r} becomes a folder name" in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench.toml"]  # nothing written, inside or out


@pytest.mark.parametrize("override", ["[imdb-sentiment.scales.other.dpo]\nbetas = [0.0]",
                                      "[imdb-sentiment.scales.other.sft]\nlearning_rat = 1e-3",
                                      "[imdb-sentiment.scales.other]\nseed = \"zero\""])
def test_another_scales_mistake_stops_every_run(tmp_path, override):
    """The whole file is checked on every run: a mistake in a scale nobody runs today is found now."""
    path = write_config(tmp_path / "bench.toml", override)
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "bench.toml, scale other: " in proc.stderr and "imdb-sentiment." in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_protocol_table_itself_is_checked(tmp_path):
    """The benchmark's own table (printed by the report as the paper's protocol), even where the scale being
    run overrides the mistake."""
    path = write_config(tmp_path / "bench.toml", {"imdb-sentiment": {"eval": {"prompts": "all"}}})
    with pytest.raises(ConfigError, match="imdb-sentiment.eval.prompts = 'all': expected an integer"):
        config.load("imdb-sentiment", "micro", path)


def test_every_scale_of_the_shipped_file_resolves():
    doc = config.read_toml()
    config.check_file(doc, config.DEFAULT_FILE)
    assert {"tiny", "micro", "paper", "gpt2", "smol"} <= set(config.scale_names(doc, "imdb-sentiment"))


@pytest.mark.parametrize("scale", ["tiny", "smol"])
def test_the_gpu_check_scale_resolves(tmp_path, scale):
    """make gpu-check shortens a scale's sweeps (one beta, one target): its per-run lists must shorten too."""
    from bench.gpu_check import config_text

    path = tmp_path / "gpucheck.toml"
    path.write_text(config_text(scale))
    cfg = config.load("imdb-sentiment", "gpucheck", path)
    assert cfg.dpo.betas == [0.1] and cfg.ppo.target_kls == [6.0] and cfg.ppo.steps == 4


@pytest.mark.parametrize("make,message", [(lambda p: p.mkdir(), "is a folder"),
                                          (lambda p: p.write_bytes(b"seed = \"\xff\xfe\"\n"), "is not UTF-8 text")])
def test_config_that_is_a_folder_or_not_utf8_is_one_line(tmp_path, make, message):
    path = tmp_path / "bench.toml"
    make(path)
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and not (tmp_path / "runs").exists()


def test_the_tests_toml_writer_round_trips_the_shipped_file(tmp_path):
    """Tests change the config as data (helpers.write_config): the shipped file parsed, written back and parsed
    again is the same data, every float exactly, empty tables kept; other names and strings are quoted."""
    import tomllib

    shipped = tomllib.loads(BASE_TOML)
    assert tomllib.loads(toml_text(shipped)) == shipped
    assert config.read_toml(write_config(tmp_path / "bench.toml")) == config.read_toml()
    odd = {"a.b": {"../x": {}, "s": 'q"\\\t\u00e9\x01', "f": [0.1, 1e-06, 1e30, -2.5], "b": [True, False]}}
    assert tomllib.loads(toml_text(odd)) == odd


def test_seed_draws_another_instance_in_its_own_folder(tmp_path):
    """--seed N (SEED=N): the same benchmark drawn again from seed N, in <scale>-seed<N>/ beside the default's, so
    neither replaces the other; a bad seed is one line naming it and what is allowed, and writes nothing."""
    from pipelines import store

    assert config.with_seed(config.load("imdb-sentiment", "micro"), 1).seed == 1
    assert store.run_root("imdb-sentiment", "tiny", 1).name == "tiny-seed1"
    assert store.run_root("imdb-sentiment", "tiny") == store.run_root("imdb-sentiment", "tiny", None)
    for bad in ("-1", "x"):
        proc = cli("run", "imdb-sentiment", "--scale", "micro", "--seed", bad, run_dir=tmp_path)
        assert proc.returncode == 2 and "--seed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr
    assert not any(tmp_path.glob("imdb-sentiment/*"))


def test_the_default_scale_and_every_verdict_ladder_reseed_the_whole_pipeline():
    """Whole-pipeline seeds wherever a verdict is printed: the default scale's seeds each train their own SFT model,
    pairs and reward model (reseed_shared), and so does every ladder with more than one seed."""
    default = config.load("imdb-sentiment", config.default_scale("imdb-sentiment"))
    assert default.seeds > 1 and default.reseed_shared
    ladders = config.scale_names(config.read_toml(config.DEFAULT_FILE), "imdb-scaling")
    rungs = [cfg for ladder in ladders for cfg in config.load_ladder("imdb-scaling", ladder).rungs.values()]
    assert any(cfg.seeds > 1 for cfg in rungs)
    assert all(cfg.reseed_shared for cfg in rungs if cfg.seeds > 1)
