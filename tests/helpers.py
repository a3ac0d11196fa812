"""What the test modules share: paths, the command line, toy models, and benchmark configs written as TOML data.
Plain functions and constants only; pytest's fixtures and hooks stay in conftest.py (which imports these).

tests/ is on sys.path under pytest (rootdir-relative conftest insertion, the default "prepend" import mode: tests/
has no __init__.py), in every pytest-xdist worker too, so a test module says `from helpers import cli`."""

import copy
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_TOML = (ROOT / "benchmarks.toml").read_text()
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


def cli(*args, run_dir: Path, check=False, env: dict | None = None):
    """python -m pipelines ... as a user runs it, with the store under run_dir (and wandb files in it)."""
    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHONPATH": str(ROOT), "WANDB_DIR": str(run_dir), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def record_in_manifest(folder: Path, name: str) -> None:
    """Record a stage folder's rewritten file in its manifest (size and sha256), as the stage would have written it:
    a test's stand-in for a stage that made this file (otherwise the run sees an edit and reruns the stage)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = (folder / name).stat().st_size
    if name in manifest.get("digests", {}) or manifest["files"][name] <= (1 << 20):
        manifest.setdefault("digests", {})[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


# --- toy models (torch is imported in the functions: conftest sets OMP_NUM_THREADS before anything imports it) ---

def sampled_minus_expected_logp(model, prompts, comps) -> tuple[float, float]:
    """Mean and standard error over completions of sum_t [log p(x_t | x_<t) + H(p(. | x_<t))].

    Under pure sampling from the model each term has mean 0 whatever its context (the sampled token's expected
    log-probability is minus the entropy), so the mean is 0 within noise; a sharper sampler (top-k, top-p,
    temperature < 1) pushes it up, a flatter one down. Far tighter than comparing the draws of two samplers."""
    import torch

    from core import lm

    with torch.no_grad():
        ids, attn, resp = lm.completion_batch(prompts, comps, 0, torch.device("cpu"))
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].double(), -1)
        terms = torch.gather(logp, 2, ids[:, 1:, None]).squeeze(-1) - (logp.exp() * logp).sum(-1)
        per_completion = (terms * resp).sum(1)
        return per_completion.mean().item(), (per_completion.std() / math.sqrt(len(comps))).item()


def toy_lm(seed: int, vocab: int = 3):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                       resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    with torch.no_grad():  # sharper distributions than the default init, so the KL is far from zero
        model.lm_head.weight.mul_(20)
    return model.eval()


def toy_tokenizer(vocab: int):
    """A fast tokenizer over token ids "0".."vocab-1": DPOTrainer wants one for its pad id; the pairs are ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = models.WordLevel({str(i): i for i in range(vocab)}, unk_token="0")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(words), pad_token="0", eos_token="1")


# --- benchmark configs as data: the shipped TOML parsed, overrides merged into it, written back as TOML ---

def merged(base: dict, overrides: dict) -> dict:
    """base with overrides merged in, table into table (a copy; neither is changed). A value None removes the key
    (TOML has no null): {"imdb-scaling": {"scales": {"micro": {"rungs": {"b": None}}}}} drops rung b."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scale_overrides(scale: str, benchmark: str = "imdb-sentiment", **keys) -> dict:
    """Overrides for one scale's table: scale_overrides("micro", dpo={"betas": [0.1]}) is
    {"imdb-sentiment": {"scales": {"micro": {"dpo": {"betas": [0.1]}}}}}."""
    return {benchmark: {"scales": {scale: keys}}}


def config_data(overrides: dict | str | None = None, base: dict | str = BASE_TOML) -> dict:
    """The benchmark config as data: base (TOML text or a parsed document; the shipped benchmarks.toml by default)
    with overrides merged in (merged()); overrides given as TOML text, e.g. a table to add, are parsed first."""
    doc = tomllib.loads(base) if isinstance(base, str) else base
    if isinstance(overrides, str):
        overrides = tomllib.loads(overrides)
    return merged(doc, overrides or {})


def write_config(path: Path, overrides: dict | str | None = None, base: dict | str = BASE_TOML) -> Path:
    """Write config_data(overrides, base) to path as TOML: a config file for `--config path`. -> path"""
    path.write_text(toml_text(config_data(overrides, base)))
    return path


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in s) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; inf, -inf and nan are TOML's spellings too
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list) and not any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"toml_text writes tables, strings, numbers, booleans and arrays of them, not {value!r}")


def toml_text(doc: dict) -> str:
    """doc as TOML: a [header] for every table (empty ones included: a table that is there counts), its own keys
    under it, then its subtables. The subset benchmarks.toml uses (no dates, no arrays of tables);
    tomllib.loads(toml_text(doc)) == doc."""
    lines: list[str] = []

    def table(path: list[str], t: dict) -> None:
        values = {k: v for k, v in t.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in t.items() if isinstance(v, dict)}
        if path and (values or not tables):  # a table with only subtables is made by their headers
            lines.extend(["", "[" + ".".join(_toml_key(k) for k in path) + "]"])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
        for k, v in tables.items():
            table([*path, k], v)

    table([], doc)
    return "\n".join(lines).lstrip("\n") + "\n"
