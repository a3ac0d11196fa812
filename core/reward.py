"""The learned reward model as a scorer: token ids in, normalised scalar rewards out.

The reward_model stage saves an HF sequence-classification folder (one output) and reward.json
({"shift", "scale", "pooling"}): reward = (raw - shift) / scale, so SFT samples on training prompts score
mean 0. Every user goes through `RewardModel`, so the offsets and the pooling are always applied.

Pooling: "last" is the usual head on the last token; "mean" averages the head over every token. A small
model trained from scratch cannot carry a review's sentiment to its last position (held-out pair accuracy
near chance at the tiny scale), while the ground truth there is close to a sum of per-word scores.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch

from core.lm import right_pad


@torch.no_grad()
def raw_scores(model, seqs: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """The scalar head at each sequence's last token (right padding). -> [N]."""
    dev = next(model.parameters()).device
    out = []
    for j in range(0, len(seqs), batch_size):
        ids, attn = right_pad(seqs[j : j + batch_size], pad_id)
        logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits[:, 0]
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def pool_mean(model) -> None:
    """Make a sequence classifier score by the mean of its head over the attended tokens."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        per_token = self.score(hidden)  # [B, T, 1]
        mask = attention_mask[..., None].to(per_token.dtype)
        return SequenceClassifierOutput(logits=(per_token * mask).sum(1) / mask.sum(1).clamp(min=1))

    model.forward = types.MethodType(forward, model)


class RewardModel:
    def __init__(self, folder: Path, device: torch.device | None = None):
        from transformers import AutoModelForSequenceClassification

        folder = Path(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        if device is not None:
            self.model.to(device)
        meta = json.loads((folder / "reward.json").read_text())
        self.shift, self.scale = meta["shift"], meta["scale"]
        if meta["pooling"] == "mean":
            pool_mean(self.model)
        self.pad_id = self.model.config.pad_token_id

    def __call__(self, seqs: list[list[int]], batch_size: int = 64) -> torch.Tensor:
        return (raw_scores(self.model, seqs, self.pad_id, batch_size) - self.shift) / self.scale


def training_reward(learns_from: str, job, tokenizer, seed: int, device=None):
    """The reward an online method (PPO, RLOO) optimises, (prompts, completions) as token ids -> [B] float32, for
    training seed `seed`. Both kinds on one scale, mean 0 and std 1 on SFT samples, so one KL coefficient means the
    same for both: "reward model": the learned reward model (normalised by the reward_model stage on its training
    prompts' SFT samples); "ground truth": its P(positive | prompt + completion), normalised here with the mean and
    std of all the pairs stage's SFT samples (held-out prompts included: 10% of them, a negligible difference).
    Eval still reports P(positive)."""
    if learns_from == "reward model":
        rm = RewardModel(job.upstream("reward_model", seed), device)
        return lambda p, c: rm([a + b for a, b in zip(p, c)])
    if learns_from == "ground truth":
        from core.scorer import GroundTruth

        gt = GroundTruth(job.inputs["ground_truth"], job.section("ground_truth").reads, tokenizer, device)
        sft = json.loads((job.upstream("pairs", seed) / "metrics.json").read_text())  # the SFT samples' rewards
        shift, scale = sft["sft_reward_mean"], sft["sft_reward_std"]
        return lambda p, c: torch.tensor((gt(p, c) - shift) / scale, dtype=torch.float32)
    raise ValueError(f"training_reward: {learns_from!r}; allowed: 'reward model', 'ground truth'")


def value_network(folder: Path):
    """The reward model as PPO's value network at its start: (backbone, head), the head a copy of the reward
    head with the normalisation folded in, head(h) = (score(h) - shift) / scale, so the values start in the units
    of the normalised reward they predict (mean pooling: a sequence's reward is the mean of these over its
    tokens). Dropout off."""
    from transformers import AutoModelForSequenceClassification

    from core.lm import disable_dropout

    folder = Path(folder)
    net = disable_dropout(AutoModelForSequenceClassification.from_pretrained(folder))
    meta = json.loads((folder / "reward.json").read_text())
    head = torch.nn.Linear(net.score.in_features, 1)
    with torch.no_grad():
        head.weight.copy_(net.score.weight / meta["scale"])
        head.bias.copy_(((net.score.bias if net.score.bias is not None else 0.0) - meta["shift"]) / meta["scale"])
    return net.base_model, head


def save_reward_meta(folder: Path, shift: float, scale: float, pooling: str) -> None:
    (Path(folder) / "reward.json").write_text(json.dumps({"shift": shift, "scale": scale, "pooling": pooling}))
