"""Reliability, third round (docs/reliability.md's table): a device the machine lacks, files of another format or
edited in place, a full disk. Each test stands for a class of the cases the table records."""

import errno
import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from helpers import cli, record_in_manifest
from core import job as jobs
from core.frontier import FIELDS, read_frontier
from core.verdict import SUMMARY_FORMAT, read_summary
from pipelines import devices, store
from pipelines.config import ConfigError


# --- a device this machine does not have: one line before any stage, nothing written -------------------------------

@pytest.mark.parametrize("how, message", [
    (["--device", "cuda:7"], "--device cuda:7: this torch"),
    (["--device", "mps"], "--device mps: this torch"),
    (["--device", "cuda"], "--device cuda: this torch"),
])
def test_a_device_this_machine_lacks_is_one_line_and_writes_nothing(tmp_path, how, message):
    if "+cpu" not in __import__("torch").__version__:
        pytest.skip("the CPU build of torch: the device's absence is what this test needs")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", *how, run_dir=tmp_path / "runs")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "available here: cpu" in lines[0]
    assert not (tmp_path / "runs").exists()  # its time (2-3 s) is measured in docs/reliability.md, not here


def test_pipelines_device_in_the_environment_is_checked_too(tmp_path):
    proc = cli("run", "imdb-scaling", "--scale", "micro", run_dir=tmp_path / "runs",
               env={"PIPELINES_DEVICE": "cuda:99"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: --device cuda:99: "), proc.stderr
    assert not (tmp_path / "runs").exists()


def fake_torch(cuda_built=True, gpus=0, free_mib=80_000, fails=None, mps=False):
    """What pipelines.devices asks of torch, for a machine with `gpus` CUDA devices (`free_mib` free on each;
    `fails`: the error an allocation raises) and MPS or not."""
    def empty(n, dtype=None, device=None):
        if fails:
            raise fails
        return SimpleNamespace(fill_=lambda v: None)

    return SimpleNamespace(
        __version__="2.13.0+fake",
        backends=SimpleNamespace(cuda=SimpleNamespace(is_built=lambda: cuda_built),
                                 mps=SimpleNamespace(is_built=lambda: mps, is_available=lambda: mps)),
        cuda=SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus,
                             mem_get_info=lambda d: (free_mib * 2**20, 81_000 * 2**20), synchronize=lambda d: None),
        device=lambda name: name, uint8="uint8", empty=empty)


@pytest.mark.parametrize("device, torch, reason", [
    ("cuda:7", fake_torch(gpus=2), "this machine has 2 CUDA devices, cuda:0 to cuda:1"),
    ("cuda:1", fake_torch(gpus=1), "this machine has 1 CUDA device, cuda:0 to cuda:0"),
    ("cuda", fake_torch(gpus=0), "no CUDA device is visible"),
    ("cuda:0", fake_torch(cuda_built=False), "built without CUDA"),
    ("mps", fake_torch(), "built without MPS"),
    ("cuda:1", fake_torch(gpus=2), None),
    ("mps", fake_torch(mps=True), None),
    ("cpu", fake_torch(cuda_built=False), None),
])
def test_which_devices_are_missing(device, torch, reason):
    found = devices.missing(device, torch)
    assert found == reason if reason is None else reason in found


def test_available_lists_every_device():
    assert devices.available(fake_torch(gpus=2, mps=True)) == ["cpu", "cuda:0", "cuda:1", "mps"]
    assert devices.available(fake_torch(cuda_built=False)) == ["cpu"]


@pytest.mark.parametrize("torch, reason", [
    (fake_torch(gpus=1, free_mib=10), "out of memory: 10 MiB free of 81000 MiB (another process holds it)"),
    (fake_torch(gpus=1, fails=RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable\nmore")),
     "it cannot be started (CUDA error: CUDA-capable device(s) is/are busy or unavailable)"),
    (fake_torch(gpus=1), None),
])
def test_a_gpu_that_cannot_start_is_found_by_the_probe(torch, reason):
    assert devices.probe("cuda:0", torch) == reason


def test_the_probe_runs_in_a_child_and_its_reason_is_one_line(monkeypatch):
    """The spine never starts the GPU itself: _start_problem runs `python -m pipelines.devices` and reads its line."""
    monkeypatch.setattr(devices, "available", lambda torch: ["cpu", "cuda:0"])
    monkeypatch.setattr(devices, "missing", lambda device, torch: None)
    monkeypatch.setattr(devices, "_start_problem", lambda device: "out of memory: 3 MiB free of 81000 MiB")
    with pytest.raises(ConfigError) as e:
        devices.check(None)  # the default device: the first GPU, probed like a named one
    assert str(e.value) == ("the default device (cuda:0, the first GPU): out of memory: 3 MiB free of 81000 MiB; "
                            "available here: cpu, cuda:0 (choose one with --device or DEVICE=)")
    monkeypatch.undo()  # the real child: it allocates on the CPU and exits 0; CUDA fails in it, said in one line
    assert devices._start_problem("cpu") is None
    if "+cpu" in __import__("torch").__version__:
        assert devices._start_problem("cuda:0").startswith("it cannot be started (")


# --- a file edited in place keeps its size: its content is recorded too ---------------------------------------------

def test_damaged_names_an_edit_that_keeps_the_size(tmp_path):
    (tmp_path / "summary.json").write_text('{"estimate": 0.5}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * (store.DIGEST_MAX_BYTES + 1))
    files = store.file_sizes(tmp_path)
    manifest = {"files": files, "digests": store.file_digests(tmp_path, files)}
    assert list(manifest["digests"]) == ["summary.json"]  # weights: by size only (hashed on every skip otherwise)
    assert store.damaged(tmp_path, manifest) is None
    (tmp_path / "summary.json").write_text('{"estimate": 0.9}')
    assert "summary.json was edited after it was written (same size" in store.damaged(tmp_path, manifest)
    assert store.damaged(tmp_path, {"files": files}) is None  # a manifest from before digests were recorded


def test_a_same_size_edit_of_a_result_reruns_its_stage(micro_copy):
    run_dir, root = micro_copy
    text = (root / "dpo" / "runs.json").read_text()
    edited = text.replace('"step": 3', '"step": 2', 1)
    assert edited != text and len(edited) == len(text)
    (root / "dpo" / "runs.json").write_text(edited)
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert "[dpo] DPO (dpo) from the pairs, one run per beta and seed (micro scale) - runs because" in proc.stderr
    assert "dpo/runs.json was edited after it was written" in proc.stderr
    assert '"step": 3' in (root / "dpo" / "runs.json").read_text()


# --- files of another version: one line, or made again -------------------------------------------------------------

def _rewrite(folder, name, text):
    """Replace a finished stage's file and record it in its manifest, as a folder from another version has it."""
    (folder / name).write_text(text)
    record_in_manifest(folder, name)


def test_read_summary_refuses_another_format_in_one_line(tmp_path):
    good = {"format": SUMMARY_FORMAT, "confidence": 0.95, "measures": ["KL <= 2"], "compute": {},
            "methods": {"dpo": {"KL <= 2": dict(estimate=0.5, low=0.4, high=0.6, seeds=3, variance=1e-3, df=4.0,
                                          not_covered=None)}},
            "comparisons": {}}
    path = tmp_path / "summary.json"
    for summary, message in [
        ({**good, "format": SUMMARY_FORMAT + 1}, f"has format {SUMMARY_FORMAT + 1}; this version reads format"),
        ({k: v for k, v in good.items() if k != "format"}, "has format None"),
        ({**good, "methods": {"dpo": {"KL <= 2": {"estimate": 0.5}}}}, "methods.dpo.KL <= 2 missing or malformed"),
        ({**good, "measures": []}, "measures missing or malformed"),
        ({**good, "comparisons": ["dpo - ppo"]}, "comparisons missing or malformed"),
        ({**good, "methods": {"dpo": "0.5"}}, "methods missing or malformed"),
        ([1, 2], "has format None"),
    ]:
        path.write_text(json.dumps(summary))
        with pytest.raises(ValueError) as e:
            read_summary(path)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    path.write_text("{trunc")
    with pytest.raises(ValueError, match="is not readable JSON"):
        read_summary(path)
    path.write_text(json.dumps(good))
    assert read_summary(path) == good


def test_read_frontier_refuses_other_columns_and_non_numbers(tmp_path):
    path = tmp_path / "frontier.csv"
    row = ["dpo", "dpo-beta0.1-seed0", "0.1", "0", "3", "test"] + ["0.5"] * 7 + ["16"]
    path.write_text(",".join(FIELDS) + "\n" + ",".join(row) + "\n")
    assert read_frontier(path)[0]["kl"] == 0.5
    path.write_text(",".join(FIELDS).replace("kl_mc", "kl_sampled") + "\n" + ",".join(row) + "\n")
    with pytest.raises(ValueError, match="not this version's"):
        read_frontier(path)
    path.write_text(",".join(FIELDS) + "\n" + ",".join(row[:6] + ["x"] + row[7:]) + "\n")
    with pytest.raises(ValueError, match="line 2: a value of"):
        read_frontier(path)


def test_the_report_refuses_a_frontier_of_another_format_in_one_line(micro_copy):
    run_dir, root = micro_copy
    text = (root / "eval" / "frontier.csv").read_text()
    _rewrite(root / "eval", "frontier.csv", text.replace("kl_mc", "kl_sampled", 1))
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--stages", "report", "--force", run_dir=run_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "[report] BadArtifact: " in proc.stderr and "not this version's" in proc.stderr
    assert "run eval again (--stages eval,report --force)" in proc.stderr


# --- a full disk: one line, and the same command resumes once there is room ---------------------------------------

def test_disk_full_is_recognised_from_the_error_or_the_free_space(tmp_path, monkeypatch):
    enospc = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise enospc
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    except RuntimeError as e:
        chained = e
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=50 * 2**30))  # room, whatever is here
    assert "no space left on the disk of" in jobs.disk_full(chained, tmp_path)
    assert "RuntimeError: [enforce fail" in jobs.disk_full(chained, tmp_path)
    assert jobs.disk_full(ValueError("a bug"), tmp_path) is None  # a plain bug stays a traceback
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=3 * 2**20))  # torch.save's own words
    assert "3.0 MiB free (RuntimeError: unexpected pos" in jobs.disk_full(RuntimeError("unexpected pos 5"),
                                                                          tmp_path / "not" / "made")


def _mount_tmpfs(path, mib) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.faults
def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_resumes(micro_run, tmp_path):
    """RUN_DIR on a small tmpfs holding the finished micro run but PPO, with room for less than PPO writes: the
    stage ends in one line naming the disk; with room again the same command resumes it, and frontier.csv is the
    uninterrupted run's. Needs root (mount); skipped elsewhere."""
    disk = tmp_path / "disk"
    needed = sum(p.stat().st_size for p in micro_run[1].rglob("*") if p.is_file() and "ppo" not in p.parts)
    if os.geteuid() != 0 or not _mount_tmpfs(disk, needed // 2**20 + 2):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        root = disk / "imdb-sentiment" / "micro"
        shutil.copytree(micro_run[1], root, ignore=shutil.ignore_patterns("ppo", ".lock"))
        proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=disk)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "[ppo] no space left on the disk of " in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # the spine's: the stage failed, or its own write found no room
        assert last.startswith("error: stage ppo failed (exit 1)") or last.startswith("error: no space left"), last
        assert not [p.name for p in root.iterdir() if ".tmp-" in p.name]  # no half-written file of the spine's
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=disk, check=True)
        assert "[ppo] resuming the interrupted run" in proc.stderr
        assert (root / "frontier.csv").read_text() == micro_run[2]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_rung_folder_that_is_a_file_is_one_line(tmp_path):
    rung = tmp_path / "runs" / "imdb-scaling" / "micro" / "a"
    rung.parent.mkdir(parents=True)
    rung.write_text("not a folder")
    proc = cli("run", "imdb-scaling", "--scale", "micro", run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: cannot create the run folder {rung} (File exists); "
                                                    f"allowed: a folder, or a path where one can be made (RUN_DIR)")
