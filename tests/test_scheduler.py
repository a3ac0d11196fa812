"""The spine's scheduler on stand-in stages (tests/fake_stage.py): stages whose inputs are ready run side by
side within the workers, a stage waits for its inputs and for free workers, and a failing stage stops the
ones beside it."""

import json
import time

import psutil
import pytest

from pipelines import config as C
from pipelines import graph
from pipelines import stages as stages_table


def fake(name, needs=(), multiprocess=True):
    return graph.Stage(name, ("dpo",), needs=needs, module="tests.fake_stage", multiprocess=multiprocess)


@pytest.fixture
def stages(monkeypatch, tmp_path):
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    cfg = C.load("imdb-sentiment", "micro")
    cfg = C.dataclasses.replace(cfg, seed=10)  # each stand-in sleeps seed / 10 = 1 s

    def use(*defined):
        monkeypatch.setattr(stages_table, "STAGES", {s.name: s for s in defined})
        monkeypatch.setattr(stages_table, "SOLO", frozenset())
        return cfg, tmp_path / "imdb-sentiment" / "micro"
    return use


def span(root, name):
    folder = root / name
    return float((folder / "started").read_text()), json.loads((folder / "metrics.json").read_text())["ended"]


def test_ready_stages_run_side_by_side_and_wait_for_inputs_and_workers(stages):
    cfg, root = stages(fake("a"), fake("b"), fake("c"), fake("d", needs=("a", "b")))
    graph.run(cfg, launch=graph.Launch(workers=2))
    a, b, c, d = (span(root, n) for n in "abcd")
    assert a[0] < b[1] and b[0] < a[1]  # a and b side by side
    assert c[0] >= min(a[1], b[1]) - 0.05  # c waited for a free worker
    assert d[0] >= max(a[1], b[1]) - 0.05  # d waited for its inputs
    assert json.loads((root / "d" / "manifest.json").read_text())["processes"] == 1


def test_one_worker_runs_one_stage_at_a_time(stages):
    cfg, root = stages(fake("a"), fake("b"))
    graph.run(cfg, launch=graph.Launch(workers=1))
    a, b = span(root, "a"), span(root, "b")
    assert b[0] >= a[1] - 0.05


def test_a_failing_stage_stops_the_one_beside_it(stages):
    cfg, root = stages(fake("slow"), fake("fail"))
    start = time.time()
    with pytest.raises(graph.StageFailed, match="stage fail failed"):
        graph.run(cfg, launch=graph.Launch(workers=2))
    assert time.time() - start < 20  # slow (30 s) was stopped, not waited for
    assert not (root / "slow").exists() and (root / ".slow.tmp" / "started").exists()  # resumable, unfinished
    assert not [p for p in psutil.Process().children(recursive=True) if "tests.fake_stage" in p.cmdline()]
