"""The ground-truth sentiment scorer: reward(text) = P(positive | text).

Stages call it through `GroundTruth`, which decides what it reads of a sample: by default the prompt and the
completion together, exactly the text a reader sees (the paper's r(x, y) = P(positive | x, y); pairs are
labelled by p(positive | x, y_w) > p(positive | x, y_l)), or the completion alone (ground_truth.reads).

Two kinds of scorer, one interface (`load_scorer(folder)(texts) -> np.ndarray of P(positive)`):
- tfidf-logreg: TF-IDF over word 1-2 grams + logistic regression, saved as JSON + safetensors (no pickle);
- hf-classifier: a transformers sequence classifier (the paper's siebert), whose positive index is read
  from its config's id2label, never assumed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

TFIDF_PARAMS = dict(ngram_range=(1, 2), lowercase=True, sublinear_tf=True, min_df=2, max_features=200_000)


class TfidfLogRegScorer:
    def __init__(self, vectorizer, coef: np.ndarray, intercept: float):
        self.vectorizer, self.coef, self.intercept = vectorizer, coef, intercept

    @classmethod
    def fit(cls, texts: list[str], labels: list[int], C: float, seed: int) -> "TfidfLogRegScorer":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = TfidfVectorizer(**TFIDF_PARAMS)
        x = vec.fit_transform(texts)
        lr = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(x, labels)
        assert list(lr.classes_) == [0, 1]
        return cls(vec, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))

    def __call__(self, texts: list[str]) -> np.ndarray:
        z = self.vectorizer.transform(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        meta = {"kind": "tfidf-logreg", "params": {**TFIDF_PARAMS, "ngram_range": list(TFIDF_PARAMS["ngram_range"])},
                "intercept": self.intercept, "terms": terms}
        (folder / "scorer.json").write_text(json.dumps(meta))
        save_file({"idf": self.vectorizer.idf_, "coef": self.coef}, str(folder / "scorer.safetensors"))

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "TfidfLogRegScorer":
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        params = {**meta["params"], "ngram_range": tuple(meta["params"]["ngram_range"])}
        params.pop("min_df"), params.pop("max_features")  # only shape the vocabulary, which is given
        vec = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(meta["terms"])}, **params)
        arrays = load_file(str(folder / "scorer.safetensors"))
        vec.fit(["x"])  # sets the fixed vocabulary up; idf_ is then replaced by the trained one
        vec.idf_ = arrays["idf"]
        return cls(vec, arrays["coef"], meta["intercept"])


def positive_index(id2label: dict) -> int:
    """Which output is 'positive', from the classifier's own config."""
    hits = [int(i) for i, name in id2label.items() if str(name).lower().startswith("pos")]
    if len(hits) != 1:
        raise ValueError(f"cannot tell the positive label from id2label={id2label}")
    return hits[0]


class HFClassifierScorer:
    def __init__(self, model_name: str, batch_size: int, max_length: int, device=None):
        """device: where the classifier runs (default: this process's device, core.dist.device: --device /
        PIPELINES_DEVICE, else the process's own GPU, else the CPU); never a GPU the process was not given."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from core.dist import device as process_device

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_name)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_name).eval()
        self.model.to(device if device is not None else process_device())
        self.pos = positive_index(self.model.config.id2label)
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for j in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[j : j + self.batch_size], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt").to(self.model.device)
                out.append(self.torch.softmax(self.model(**enc).logits.float(), -1)[:, self.pos].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def save_hf_reference(folder: Path, model_name: str, batch_size: int, max_length: int) -> None:
    meta = {"kind": "hf-classifier", "model": model_name, "batch_size": batch_size, "max_length": max_length}
    (folder / "scorer.json").write_text(json.dumps(meta))


@functools.cache  # a scorer is read-only: one load per folder (PPO and RLOO ask once per training seed)
def load_scorer(folder: Path, device=None):
    folder = Path(folder)
    meta = json.loads((folder / "scorer.json").read_text())
    if meta["kind"] == "tfidf-logreg":
        return TfidfLogRegScorer.load(folder, meta)
    return HFClassifierScorer(meta["model"], meta["batch_size"], meta["max_length"], device)


READS = ("prompt+completion", "completion")


class GroundTruth:
    """The true reward of samples given as token ids: P(positive) of the decoded prompt + completion (one decode
    of the joined ids: the text a reader sees), or of the completion alone. -> np.ndarray [N]."""

    def __init__(self, folder: Path | None, reads: str, tokenizer, device=None, scorer=None):
        """The scorer saved in folder (the ground_truth stage's), or one given as `scorer` (folder None)."""
        if reads not in READS:
            raise ValueError(f"ground_truth.reads = {reads!r}; allowed: {', '.join(READS)}")
        self.scorer = scorer if folder is None else load_scorer(folder, device)
        self.reads, self.tokenizer = reads, tokenizer

    def texts(self, prompts: list[list[int]], completions: list[list[int]]) -> list[str]:
        seqs = completions if self.reads == "completion" else [p + c for p, c in zip(prompts, completions)]
        return [self.tokenizer.decode(s, skip_special_tokens=True) for s in seqs]

    def __call__(self, prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        return np.asarray(self.scorer(self.texts(prompts, completions)), dtype=np.float64)
