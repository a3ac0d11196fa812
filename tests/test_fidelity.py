"""The paper's reward r(x, y), PPO's response window, dropout, the value model's start and the KL controller."""

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core import lm
from core.reward import training_reward
from core.scorer import GroundTruth, TfidfLogRegScorer
from ppo import algorithm as A
from helpers import toy_lm

ppo = importlib.import_module("ppo.__main__")

WORDS = ["<eos>", "the", "film", "plot", "wonderful", "brilliant", "awful", "dull"]


class WordTokenizer:
    """ids <-> words, enough for GroundTruth (decode) and PPO (eos / pad ids)."""
    eos_token_id = pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))


@pytest.fixture(scope="module")
def sentiment_scorer(tmp_path_factory):
    texts = ["wonderful the film", "brilliant the plot", "wonderful brilliant", "awful the film", "dull the plot",
             "awful dull"] * 5  # "the", "film", "plot": as often in either class
    folder = tmp_path_factory.mktemp("gt")
    TfidfLogRegScorer.fit(texts, [1, 1, 1, 0, 0, 0] * 5, C=10.0, seed=0).save(folder)
    (folder / "scorer.json").write_text((folder / "scorer.json").read_text().replace('"min_df": 2', '"min_df": 1'))
    return folder


def test_the_ground_truth_reads_the_prompt_with_the_completion(sentiment_scorer):
    """A prompt that carries the sentiment: r(x, y) = P(positive | x, y) sees it, the completion alone does not."""
    prompt, completion = [4, 5], [1, 2, 0]  # "wonderful brilliant" + "the film <eos>"
    both = GroundTruth(sentiment_scorer, "prompt+completion", WordTokenizer())
    alone = GroundTruth(sentiment_scorer, "completion", WordTokenizer())
    assert both.texts([prompt], [completion]) == ["wonderful brilliant the film"]
    assert alone.texts([prompt], [completion]) == ["the film"]
    assert both([prompt], [completion])[0] > alone([prompt], [completion])[0] + 0.2
    with pytest.raises(ValueError, match="allowed: prompt\\+completion, completion"):
        GroundTruth(sentiment_scorer, "prompt", WordTokenizer())


def test_every_stage_scores_prompt_plus_completion(micro_run):
    """pairs (the labels), PPO-GT and RLOO-GT (their training reward) and eval (the frontier) call the configured
    reading."""
    from datasets import load_from_disk

    _, root, _ = micro_run
    tokenizer = lm.load_tokenizer(root / "sft")
    gt = GroundTruth(root / "ground_truth", "prompt+completion", tokenizer)
    samples = load_from_disk(str(root / "pairs" / "samples"))
    prompts, completions = samples["prompt_ids"], samples["completion_ids"]
    assert np.allclose(samples["score"], gt(prompts, completions))
    alone = GroundTruth(root / "ground_truth", "completion", tokenizer)(prompts, completions)
    assert not np.allclose(samples["score"], alone)  # the two readings differ on these samples

    job = SimpleNamespace(inputs={"ground_truth": root / "ground_truth"}, upstream=lambda stage, seed=0: root / stage,
                          section=lambda name: SimpleNamespace(reads="prompt+completion"))
    train_reward = training_reward("ground truth", job, tokenizer, 0)(prompts[:8], completions[:8])
    sft = json.loads((root / "pairs" / "metrics.json").read_text())
    want = (gt(prompts[:8], completions[:8]) - sft["sft_reward_mean"]) / sft["sft_reward_std"]
    assert np.allclose(train_reward.numpy(), want, atol=1e-5)  # ppo-gt trains on the normalised r(x, y)

    shown = json.loads((root / "eval" / "samples.json").read_text())
    texts = [p + t["text"] for p, t in zip(shown["prompts"], shown["completions"]["sft"])]
    assert np.allclose([t["reward"] for t in shown["completions"]["sft"]], gt.scorer(texts), atol=1e-4)


def ppo_cfg(**kw):
    base = dict(max_new_tokens=5, ppo_epochs=1, minibatch_size=8, clip_range=0.2, value_clip_range=0.2, vf_coef=0.1,
                value_model="policy_head", gamma=1.0, lam=0.95)
    return SimpleNamespace(**{**base, **kw})


def toy_rollouts(policy, n=8):
    prompts = [[1 + i % 3] * (1 + i % 4) for i in range(n)]  # lengths 1-4: left padding while sampling
    value = ppo.ValueModel("policy_head", None, policy)
    score_fn = lambda p, c: torch.tensor([float(len(x)) for x in c])  # noqa: E731
    batch = ppo.rollout(policy, policy, value, prompts, lm.sample_seeds(n, "test"), score_fn, ppo_cfg(),
                        WordTokenizer(), torch.device("cpu"))
    return prompts, value, batch


def test_ppo_trains_on_the_log_probs_of_exactly_the_sampled_response_tokens():
    """Response position t of PPO's tensors is completion token t: its log-probs equal core.lm's
    completion log-probs of the same rollouts, token by token (a window shifted by one would not)."""
    policy = toy_lm(0, vocab=len(WORDS))
    prompts, _, batch = toy_rollouts(policy)
    ids, attn, resp = lm.completion_batch(prompts, batch.completions, 0, torch.device("cpu"))
    with torch.no_grad():
        want = lm.token_logprobs(policy(input_ids=ids, attention_mask=attn).logits[:, :-1], ids[:, 1:])
    for b, completion in enumerate(batch.completions):
        n = len(completion)
        assert batch.mask[b].sum() == n
        assert torch.allclose(batch.logp[b, :n], want[b][resp[b]], atol=1e-5)
    assert torch.allclose(batch.logp.sum(1), lm.completion_logprobs(policy, prompts, batch.completions, 0, 8),
                          atol=1e-4)
    assert batch.logp.shape == batch.ref_logp.shape == batch.values.shape == batch.mask.shape


@pytest.mark.parametrize("loader", ["ours", "plain"])
def test_with_dropout_in_the_config_the_first_ratio_is_1(loader, tmp_path):
    """GPT-2 checkpoints carry dropout 0.1. Loaded as every stage loads a policy (lm.load_causal_lm: dropout
    off), the update's first minibatch sees the rollout's own log-probs: ratio 1, nothing clipped. Loaded
    plainly, with its dropout, it would not."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                               resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)).save_pretrained(tmp_path)
    policy = lm.load_causal_lm(tmp_path, torch.device("cpu")) if loader == "ours" else \
        AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    dropout_off = loader == "ours"
    _, value, batch = toy_rollouts(policy)
    opt = torch.optim.SGD(list(policy.parameters()) + list(value.parameters()), lr=0.0)
    accelerator = SimpleNamespace(backward=lambda loss: loss.backward(), clip_grad_norm_=lambda *a: None)
    advantages = torch.randn_like(batch.logp) * batch.mask
    stats, _ = ppo.ppo_update(policy, value, opt, opt, batch, advantages, advantages, ppo_cfg(), accelerator, [0], 1.0,
                              lambda loss: None)
    if dropout_off:
        assert stats["clipfrac"] == 0.0 and stats["approx_kl"] < 1e-10
    else:
        assert stats["approx_kl"] > 1e-5  # orders of magnitude above the no-dropout case


def test_the_value_model_starts_in_the_normalised_reward_units(micro_run):
    """Initialised from the reward model, the value head is the normalised reward head: over a sequence its
    mean (mean pooling) is the sequence's normalised reward, as RewardModel scores it."""
    from core.reward import RewardModel

    _, root, _ = micro_run
    rm = RewardModel(root / "reward_model")
    assert json.loads((root / "reward_model" / "reward.json").read_text())["pooling"] == "mean"
    value = ppo.ValueModel("reward_model", root / "reward_model", None)
    seqs = [[5, 9, 11, 3], [7, 2, 2, 8, 1, 4]]
    ids, attn = lm.right_pad(seqs, 0)
    with torch.no_grad():
        per_token = value.head(value.backbone(input_ids=ids, attention_mask=attn).last_hidden_state).squeeze(-1)
    means = (per_token * attn).sum(1) / attn.sum(1)
    assert torch.allclose(means, rm(seqs), atol=1e-4)


def test_the_controller_holds_until_the_kl_first_reaches_its_target():
    c = A.AdaptiveKLController(0.1, target=6.0, horizon=128, hold=True)
    assert c.update(0.5, 64) == 0.1 and c.update(4.0, 64) == 0.1  # still climbing: nothing to correct yet
    assert c.update(7.2, 64) == pytest.approx(0.1 * 1.1)  # reached (error +0.2): raised
    assert c.update(3.0, 64) == pytest.approx(0.11 * 0.9)  # after it, lowered as Ziegler et al. do
    free = A.AdaptiveKLController(0.1, target=6.0, horizon=128, hold=False)
    assert free.update(0.5, 64) == pytest.approx(0.09)  # Ziegler et al.'s rule: lowered from the first step


def test_the_hf_classifier_runs_on_the_process_device_not_any_gpu_it_sees(micro_run, tmp_path, monkeypatch):
    """A classifier must follow --device / PIPELINES_DEVICE (each process its own device), not pick 'cuda'."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from core.scorer import HFClassifierScorer

    _, root, _ = micro_run
    tokenizer = AutoTokenizer.from_pretrained(root / "sft")
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2,
                                                     num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                     label2id={"NEGATIVE": 0, "POSITIVE": 1},
                                                     pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path), tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU in sight, but this process has the CPU
    monkeypatch.setenv("PIPELINES_DEVICE", "cpu")
    scorer = HFClassifierScorer(str(tmp_path), batch_size=2, max_length=32)
    assert scorer.model.device.type == "cpu"
    p = scorer(["a fine film", "bad"])
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()
