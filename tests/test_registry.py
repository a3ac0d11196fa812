"""The method registry (core/methods.py) is the one place a method is declared: the stage table, the config's
inheritance, the verdict's comparisons, the FLOP count and docs/methods.md are derived from it. A stand-in method
added through the registry, its config section and a TOML table only trains and reaches the frontier and the
verdict."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.comparison import PAIRS
from core.config import SECTIONS, sweep_lists
from core.methods import KINDS, METHODS, PAPER, stages
from pipelines import reference
from pipelines import stages as stage_table

ROOT = Path(__file__).resolve().parent.parent


def test_generated_references_are_current():
    docs = ROOT / "docs"
    assert (docs / "config.md").read_text() == reference.reference_markdown(), "run `make reference`"
    page = (docs / "methods.md").read_text()
    assert page == reference.methods_markdown(page), "run `make reference`"


def test_every_method_is_wired_from_its_registry_entry():
    for stage, methods in stages().items():
        first = methods[0]
        assert stage in SECTIONS, f"method stage {stage} has no config section (core.config.BenchmarkConfig)"
        assert first.module in KINDS
        assert all((m.module, m.inherits, m.loss) == (first.module, first.inherits, first.loss) for m in methods), stage
        assert first.inherits is None or first.inherits in SECTIONS
        table = stage_table.STAGES[stage]
        assert stage in table.sections and table.seeded and (table.module or stage) == first.module
        assert stage in stage_table.STAGES["eval"].needs and stage in stage_table.STAGES["report"].needs
        runs, _ = sweep_lists(stage)
        assert (runs is None) == (first.swept == "-"), f"{stage}: its sweep and the registry's `swept` disagree"
    for m in METHODS.values():
        assert set(m.against) <= set(METHODS) - {m.name}


def test_the_verdict_compares_the_papers_methods_first():
    assert PAIRS[:5] == [("dpo", "ppo"), ("dpo", "ppo-gt"), ("ppo", "ppo-gt"), ("dpo", "unlikelihood"),
                         ("dpo", "preferred-ft")]
    assert PAIRS[-4:] == [("ppo", "rloo"), ("ppo-gt", "rloo-gt"), ("ppo", "grpo"), ("ppo-gt", "grpo-gt")]
    assert PAIRS[5:-4] == [("dpo", m) for m in METHODS if m not in PAPER]  # DPO against every method beyond them
    assert PAPER == ("dpo", "ppo", "ppo-gt", "unlikelihood", "preferred-ft")


STAND_IN = '''    _pair("nca", "NCA", "teal", "x", "nca_pair", 'TRL `DPOTrainer`, `loss_type="nca_pair"`'),
'''
SECTION = '''    nca: DPOLossConfig = spec(help="[nca] NCA (Chen et al. 2024): DPO's trainer, loss_type nca_pair")
'''
TABLE = '''
[imdb-sentiment.scales.micro.nca]
betas = [0.5]
'''


def test_a_stand_in_method_through_the_registry_its_section_and_a_toml_table_runs_at_micro(micro_copy, tmp_path):
    """NCA (TRL's nca_pair loss) added as docs/adding-a-method.md says: one registry line, one config field, one TOML
    table, in a copy of the repository; the finished micro run's shared stages are reused, NCA trains, eval puts
    it on the frontier, the report compares it with DPO, bench/flops.py counts it."""
    run_dir, root = micro_copy
    repo = tmp_path / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    methods, config = repo / "core" / "methods.py", repo / "core" / "config.py"
    text = methods.read_text()
    at = text.index("    Method(\"best-of-n\",")  # before Best-of-N: any place in the table works
    methods.write_text(text[:at] + STAND_IN + text[at:])
    text = config.read_text()
    at = text.index("    unlikelihood: UnlikelihoodConfig")
    config.write_text(text[:at] + SECTION + text[at:])
    with open(repo / "benchmarks.toml", "a") as f:
        f.write(TABLE)
    changed = subprocess.run(["git", "diff", "--no-index", "--stat", str(ROOT / "core"), str(repo / "core")],
                             capture_output=True, text=True).stdout
    assert changed.count("|") == 2, changed  # methods.py and config.py, nothing else in core/

    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHONPATH": str(repo), "WANDB": "off"}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", "imdb-sentiment", "--scale", "micro",
                           "--methods", "dpo,nca"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[sft] up to date" in proc.stderr and "[dpo] up to date" in proc.stderr  # nothing else retrained
    runs = json.loads((root / "nca" / "runs.json").read_text())
    assert {(r["method"], r["param"]) for r in runs} == {("nca", 0.5)} and len(runs) == 2  # two seeds at micro
    frontier = (root / "frontier.csv").read_text()
    assert frontier.count("\nnca,") >= 4  # its checkpoints, on test and select
    report = (root / "report.md").read_text()
    assert "DPO vs NCA" in report and "| NCA |" in report
    flops = subprocess.run([sys.executable, "-c", f"from bench.flops import stage_flops; from pathlib import Path; "
                            f"print(stage_flops(Path({str(root)!r}))['nca'])"], cwd=repo, env=env,
                           capture_output=True, text=True)
    assert flops.returncode == 0 and float(flops.stdout) > 0, flops.stderr[-2000:]
