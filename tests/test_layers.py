"""Layers import one way: core/ below the stages, the stages below the spine (pipelines/). A stage meets the spine
only through files (its job.json, its folder), so neither core/ nor a stage imports pipelines/; core/ imports no
stage. Every import counts, those inside functions too."""

import ast
from pathlib import Path

import pytest

from core.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
STAGE_PACKAGES = sorted({"sft", "ground_truth", "pairs", "reward_model", "eval", "report", "scaling"}
                        | {m.module.split(".")[0] for m in METHODS.values()})


def imported(path: Path) -> set[str]:
    """Top-level package of every module the file imports (relative imports resolved to its own package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(path.parent.name if node.level else node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["core", *STAGE_PACKAGES])
def test_core_and_stages_do_not_import_the_spine(package):
    files = sorted((ROOT / package).glob("*.py"))
    assert files, f"no package {package}/"
    above = {"pipelines"} | ({"tests", "bench"}) | (set(STAGE_PACKAGES) if package == "core" else set())
    wrong = {f.relative_to(ROOT).as_posix(): sorted(imported(f) & above) for f in files if imported(f) & above}
    assert not wrong, f"imports from a layer above: {wrong}"


def test_a_stage_does_not_import_another():
    for package in STAGE_PACKAGES:
        for f in (ROOT / package).glob("*.py"):
            others = imported(f) & (set(STAGE_PACKAGES) - {package})
            assert not others, f"{f.relative_to(ROOT)} imports the stage(s) {sorted(others)}: stages meet through files"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    (tmp_path / "core").mkdir()
    f = tmp_path / "core" / "x.py"
    f.write_text("def f():\n    from pipelines.config import load\n    from . import dist\n")
    assert imported(f) == {"pipelines", "core"}
