"""The run store: atomic stage folders, the lock, and why a stage reruns."""

import os
import time
import subprocess
import sys

import psutil
import pytest

from helpers import cli
from pipelines import graph, stages, store
from pipelines.config import ConfigError


def test_commit_replaces_atomically(tmp_path):
    final = tmp_path / "dpo"
    for version in ("one", "two"):
        tmp, _ = store.temp_dir_for(final)
        (tmp / "v").write_text(version)
        store.commit_dir(tmp, final)
    assert (final / "v").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo"]


def test_a_crashed_temp_folder_never_looks_finished(tmp_path):
    final = tmp_path / "sft"
    tmp, resumed = store.temp_dir_for(final)
    (tmp / "half").write_text("x")
    assert store.read_manifest(final) is None and not final.exists() and not resumed
    assert not (store.temp_dir_for(final)[0] / "half").exists()  # without a resume key the next run starts clean


def test_an_interrupted_job_resumes_only_when_it_is_the_same_job(tmp_path):
    final = tmp_path / "ppo"
    tmp, _ = store.temp_dir_for(final, "job-a")
    (tmp / "checkpoint-2").mkdir()
    tmp, resumed = store.temp_dir_for(final, "job-a")
    assert resumed and (tmp / "checkpoint-2").exists()
    tmp, resumed = store.temp_dir_for(final, "job-b")  # config or inputs changed: start over
    assert not resumed and not (tmp / "checkpoint-2").exists()


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(ConfigError, match=f"in use by process {sleeper.pid}"):
            with store.RunLock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with store.RunLock(tmp_path):  # the holder is dead now: stale lock taken over
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_why_stale_names_the_changed_keys():
    config = {"seed": 0, "dpo": {"betas": [0.1], "batch_size": 8}}
    manifest = {"config": config, "config_hash": graph.stable_hash(config), "inputs": {"sft": "a"}}
    assert graph._why_stale(manifest, config, {"sft": "a"}) is None
    assert graph._why_stale(None, config, {}) == "not run yet"
    changed = {"seed": 0, "dpo": {"betas": [0.1, 1.0], "batch_size": 8}}
    assert graph._why_stale(manifest, changed, {"sft": "a"}) == "config changed: dpo.betas"
    assert graph._why_stale(manifest, config, {"sft": "b"}) == "inputs changed: sft"


@pytest.mark.parametrize("content", [b"\x8f\x00\xffrandom bytes", b"[1, 2, 3]", b'{"stage": "report"}', b""])
def test_an_unreadable_manifest_means_redo_that_stage(tmp_path, content):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "manifest.json").write_bytes(content)
    assert store.read_manifest(tmp_path / "report") is None


def test_a_corrupt_manifest_reruns_its_stage_only(micro_copy):
    run_dir, root = micro_copy
    (root / "report" / "manifest.json").write_bytes(b"\x8f\x00\xff not json")
    (root / "eval" / "manifest.json").write_text("[1, 2]")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert "[eval] " in proc.stderr and "eval/manifest.json is missing or unreadable" in proc.stderr
    assert "[sft] up to date" in proc.stderr and "Traceback" not in proc.stderr
    assert store.read_manifest(root / "eval") and store.read_manifest(root / "report")


@pytest.mark.parametrize("where", ["file", "file/below"])
def test_run_dir_that_is_a_file_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("not a folder")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=tmp_path / where)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"RUN_DIR: {tmp_path / 'file'} is a file" in proc.stderr
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_run_dir_not_writable_is_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="is not writable"):
        store.check_run_dir(tmp_path / "ro" / "runs")


def test_deleted_or_edited_results_are_published_again(micro_copy):
    run_dir, root = micro_copy
    (root / "frontier.csv").unlink()
    (root / "report.md").unlink()
    (root / "frontier.png").write_bytes(b"edited")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert "[report] up to date" in proc.stderr
    for name in ("frontier.csv", "report.md", "frontier.png"):
        assert (root / name).read_bytes() == (root / ("report" if name == "report.md" else "eval") / name).read_bytes()


def test_damaged_names_a_missing_or_resized_file(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "metrics.json").write_text("{}")
    manifest = {"files": store.file_sizes(tmp_path)}
    assert store.damaged(tmp_path, manifest) is None
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"x" * 4)
    assert "ckpt/model.safetensors has 4 bytes, not the 10" in store.damaged(tmp_path, manifest)
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    assert "ckpt/model.safetensors is missing" in store.damaged(tmp_path, manifest)
    assert store.damaged(tmp_path, {}) is None  # a manifest from before files were recorded


def test_a_truncated_stage_file_reruns_that_stage(micro_copy):
    run_dir, root = micro_copy
    (root / "report" / "report.html").write_text("truncated")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert "[report] " in proc.stderr and "report/report.html has 9 bytes" in proc.stderr, proc.stderr
    assert "[eval] up to date" in proc.stderr and store.damaged(root / "report", store.read_manifest(root / "report")) is None


def test_a_selected_stage_refuses_a_damaged_input(micro_copy):
    """--stages report with eval's files damaged: one line naming the file, not a traceback from the stage."""
    run_dir, root = micro_copy
    (root / "eval" / "samples.json").unlink()
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--stages", "report", "--force", run_dir=run_dir)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "stage report needs eval, whose files are damaged" in proc.stderr and "samples.json is missing" in proc.stderr


def test_a_zombie_does_not_hold_the_lock(tmp_path):
    """A stage killed with its spine is a zombie until something reaps it (in a container, maybe never)."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    (tmp_path / ".lock").write_text(f"999999999\n{zombie.pid}\n")
    with store.RunLock(tmp_path):
        pass
    zombie.wait()


def test_check_finds_a_selected_stages_inputs_in_the_runs_own_folders(micro_run, tmp_path, monkeypatch):
    """A ladder rung keeps its stages in its own folder, not under store.run_root: graph.run hands check the
    folders it runs in, and check looks for a selected stage's inputs there."""
    from pipelines import config

    monkeypatch.setenv("RUN_DIR", str(tmp_path))  # nothing finished under the default root
    cfg, root = config.load("imdb-sentiment", "micro"), micro_run[1]
    with pytest.raises(ConfigError, match="stage report needs .*eval, not finished"):
        graph.check(cfg, ["report"])
    graph.check(cfg, ["report"], folders={name: root / name for name in stages.STAGES})
