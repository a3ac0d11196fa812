"""Language-model pieces shared by the stages: prompts, pure sampling, log-probs and the exact sequence KL.

Everything works on token ids. Prompts and completions are kept as ids end to end, so what a method trains
on is exactly what was sampled (re-tokenizing prompt + completion text can merge tokens across the join).
A completion is the sampled ids up to and including the first EOS, or max_new_tokens ids without one.
"""

from __future__ import annotations

import contextlib
import hashlib
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def device() -> torch.device:
    """This process's device (core.dist.device: PIPELINES_DEVICE, else its own GPU, else the CPU)."""
    from core.dist import device as process_device

    return process_device()


def autocast(dev: torch.device):
    """bf16 autocast on CUDA (where it halves memory traffic), nothing elsewhere: fp32 on CPU."""
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_seeds(n: int, *key) -> list[int]:
    """One seed per sampled row, from a key naming the draw (e.g. ("eval", seed) or ("ppo", seed, step)).

    A row's sample depends only on its seed and the model, not on which batch or process draws it: the
    same prompt gets the same completion whatever the batch size or the number of processes, and every
    checkpoint evaluated with the same key shares its random numbers (common random numbers)."""
    base = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=7).digest(), "big")
    return [base + i for i in range(n)]


def load_causal_lm(path, dev: torch.device | None = None):
    """A causal LM in eval mode, with dropout off (see disable_dropout)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per checkpoint load drowns the stage's own progress

    model = AutoModelForCausalLM.from_pretrained(path)
    return positions_from_mask(disable_dropout(model)).to(dev or device()).eval()


def positions_from_mask(model):
    """Make the model count each row's positions from its first attended token when its caller gives none.

    A forward without position_ids numbers the columns 0..T-1 whatever the mask, so a left-padded row's tokens sit
    at shifted positions: with GPT-2's learned absolute positions its log-probs are another model's (measured on
    the tiny model: up to 8 nats apart). Our own code pads on the right or passes positions; TRL's online trainers
    (RLOO, GRPO, Online DPO) score left-padded prompt + completion rows without them, so the policy gradient and
    the KL to the reference were computed at the wrong positions. Right-padded and unpadded rows get 0..T-1 as
    before. Patched on the backbone, which TRL's fused LM head calls directly."""
    import types

    backbone = model.base_model
    if getattr(backbone, "positions_from_mask", False):
        return model

    def forward(self, input_ids=None, *args, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            width = (input_ids if input_ids is not None else inputs_embeds).shape[1]  # the new columns (with a cache)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -width:]
        return type(self).forward(self, input_ids, *args, attention_mask=attention_mask, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds, **kwargs)

    backbone.forward = types.MethodType(forward, backbone)  # a bound method: a deep copy (a reference) binds its own
    backbone.positions_from_mask = True
    return model


def disable_dropout(model):
    """Dropout off in every layer, in train mode too: every method trains without it (TRL's trainers do the same).
    With dropout on, PPO's update would see other log-probs than the rollout's no-dropout pass, so the ratio
    pi / pi_old would not be 1 before the first step."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # Llama-style attention takes a float
            module.attention_dropout = 0.0
    return model


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def make_prompts(texts: list[str], tokenizer, min_tokens: int, max_tokens: int, seed: int) -> list[list[int]]:
    """The first k tokens of each text, k uniform in [min_tokens, max_tokens] (seeded), as in the paper."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        k = rng.randint(min_tokens, max_tokens)
        out.append(ids[:k])
    return out


def split_prompts(data_cfg, seed: int, split: str, n: int, tokenizer) -> list[list[int]]:
    """The benchmark's first n prompts from a split ("train" or "eval"): reviews longer than min_review_chars,
    cut to their first prompt_min_tokens..prompt_max_tokens tokens."""
    from core.data import make_splits, prompt_reviews

    texts = prompt_reviews(getattr(make_splits(data_cfg, seed), split), data_cfg)[:n]
    return make_prompts(texts, tokenizer, data_cfg.prompt_min_tokens, data_cfg.prompt_max_tokens, seed)


def length_batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of prompts, sorted by length (stable) and cut into batches: neighbours in a batch differ in
    length by little, so left-padding them costs little."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as [N, T] ids padded on the left with pad_id, and the attention mask."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = torch.tensor(s)
        attn[b, width - len(s) :] = 1
    return ids, attn


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int, batch_size: int,
                       seeds: list[int]) -> list[list[int]]:
    """One pure sample (temperature 1, no top-k / top-p) per prompt, with a KV cache.

    Row i draws its tokens by inverting the next-token CDF at uniforms from its own generator (seeds[i]),
    so its sample does not depend on how rows are batched or split over processes (see sample_seeds; up to
    float rounding, which moves a CDF boundary by ~1e-8 and so, rarely, one draw). Prompts are batched by
    length and left-padded: pads are masked and every row counts its positions from its own first token.
    Returns completions in prompt order.
    """
    from torch.distributed.fsdp import FSDPModule

    from core import dist

    # a sharded model's forward is a collective (FSDP2 gathers each block's weights): every process must make as many,
    # so a batch stops when every process's rows are done, not each process's own
    lockstep = isinstance(model, FSDPModule) and dist.world_size() > 1
    dev = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    batches = length_batches(prompts, batch_size)
    quiet = len(batches) < 2 or not dist.is_main()
    for idx in tqdm(batches, desc="sampling", unit="batch", leave=False, disable=True if quiet else None):
        ids, attn = left_pad([prompts[i] for i in idx], 0)  # any valid id: pads are masked
        ids, attn = ids.to(dev), attn.to(dev)
        positions = (attn.cumsum(1) - 1).clamp(min=0)
        uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(seeds[i]),
                                           dtype=torch.float64) for i in idx]).to(dev)  # [b, max_new_tokens]
        past, step_input, done = None, ids, torch.zeros(len(idx), dtype=torch.bool, device=dev)
        tokens = []
        for t in range(max_new_tokens):
            with autocast(dev):
                o = model(input_ids=step_input, attention_mask=attn, position_ids=positions, past_key_values=past,
                          use_cache=True)
            past = o.past_key_values
            cdf = torch.softmax(o.logits[:, -1].double(), dim=-1).cumsum(-1)
            nxt = torch.searchsorted(cdf, uniforms[:, t : t + 1] * cdf[:, -1:]).squeeze(1).clamp(max=cdf.shape[1] - 1)
            tokens.append(nxt)
            done |= nxt == eos_id
            if int(dist.all_sum(done.all().long())) == dist.world_size() if lockstep else done.all():
                break
            step_input, positions = nxt[:, None], positions[:, -1:] + 1
            attn = torch.cat([attn, attn.new_ones((len(idx), 1))], 1)
        sampled = torch.stack(tokens, 1).tolist()
        for row, i in zip(sampled, idx):
            out[i] = row[: row.index(eos_id) + 1] if eos_id in row else row
    return out


def sample(sampler: str, model, model_dir, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
           batch_size: int, seeds: list[int]) -> tuple[list[list[int]], list[float] | None]:
    """Completions from the configured sampler: "hf" (sample_completions, on model) or "vllm" (an engine on
    model_dir, core/vllm_sampling.py). -> (completions, vLLM's log-probs of them, or None for hf)."""
    if sampler == "vllm":
        from core import vllm_sampling

        return vllm_sampling.sample_completions(model_dir, prompts, max_new_tokens, eos_id, seeds,
                                                next(model.parameters()).device)
    return sample_completions(model, prompts, max_new_tokens, eos_id, batch_size, seeds), None


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as [N, T] ids padded on the right with pad_id, and the attention mask."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
    return ids, attn


def completion_batch(prompts, completions, pad_id: int, dev):
    """input_ids [B, T], attention mask, and a response mask [B, T-1] marking targets that are completion tokens."""
    ids, attn = right_pad([p + c for p, c in zip(prompts, completions)], pad_id)
    resp = torch.zeros((len(prompts), ids.shape[1] - 1), dtype=torch.bool)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        resp[b, len(p) - 1 : len(p) + len(c) - 1] = True  # logits at t predict token t+1
    return ids.to(dev), attn.to(dev), resp.to(dev)


def target_logprobs(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The targets' entries of full-vocabulary log-probs. logprobs [B, T, V], targets [B, T] -> [B, T]."""
    return torch.gather(logprobs, 2, targets[..., None]).squeeze(-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position. logits [B, T, V], targets [B, T] -> [B, T]."""
    return target_logprobs(F.log_softmax(logits.float(), dim=-1), targets)


class _TargetLogprob(torch.autograd.Function):
    """log_softmax(logits)[target] per position, with a hand-written backward: one softmax pass (d/dlogits =
    onehot(target) - softmax, times the incoming gradient). Autograd's log_softmax + gather computes the same, but
    its backward writes a zero [B, T, V] tensor for the gather, then makes another pass for the log_softmax.
    Math in fp32 whatever the logits' precision; the gradient in theirs."""

    @staticmethod
    def forward(ctx, logits, targets, with_entropy: bool):
        logp = F.log_softmax(logits.float(), dim=-1)  # one fused pass (logsumexp is several on the CPU)
        ctx.save_for_backward(logp, targets)
        ctx.dtype = logits.dtype
        # a metric: no gradient flows through it
        entropy = -(logp.exp() * logp).sum(-1) if with_entropy else logp.new_zeros(logp.shape[:-1])
        ctx.mark_non_differentiable(entropy)
        return torch.gather(logp, -1, targets[..., None]).squeeze(-1), entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _):
        logp, targets = ctx.saved_tensors
        grad = torch.exp(logp).mul_(-grad_out[..., None])  # - softmax x g
        grad.scatter_add_(-1, targets[..., None], grad_out[..., None])  # + onehot x g
        return grad.to(ctx.dtype), None, None


def next_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, entropy: bool = False):
    """log p(ids[:, t + 1] | ids[:, :t + 1]) at each position t from the model's logits over the whole sequence
    (fp32), without slicing the logits (a slice's backward writes another [B, T, V] tensor); equal to
    token_logprobs(logits[:, :-1], ids[:, 1:]), its gradient up to float rounding. With entropy, also the
    entropy of each position's next-token distribution (no gradient).
    logits [B, T, V], ids [B, T] -> [B, T-1] (and [B, T-1])."""
    targets = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)  # the last position predicts past the sequence: cut below
    logp, ent = _TargetLogprob.apply(logits, targets, entropy)
    return (logp[:, :-1], ent[:, :-1]) if entropy else logp[:, :-1]


def kl_of_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p(v) (log p(v) - log q(v)) at each position, from full-vocabulary log-probs. [B, T, V] x2 -> [B, T]."""
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def completion_logprobs(model, prompts, completions, pad_id: int, batch_size: int,
                        training_precision: bool = False) -> torch.Tensor:
    """Sum of log p(completion | prompt) per sequence, in fp32 (the reference log-probs DPO's loss subtracts,
    whatever precision it trains in), or in the training precision (autocast: bf16 on CUDA). -> [N]."""
    dev = next(model.parameters()).device
    out = []
    for j in range(0, len(prompts), batch_size):
        ids, attn, resp = completion_batch(prompts[j : j + batch_size], completions[j : j + batch_size], pad_id, dev)
        with autocast(dev) if training_precision else torch.autocast(dev.type, enabled=False):
            logits = model(input_ids=ids, attention_mask=attn).logits
        out.append((next_token_logprobs(logits, ids) * resp).sum(1).cpu())
    return torch.cat(out)


CPU_KL_ROWS = 32


@torch.no_grad()
def sequence_kl(policy, ref, prompts, completions, pad_id: int, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: the exact sequence KL (sum over response positions of the full-vocabulary per-token KL,
    prompt masked), the Monte-Carlo estimate sum(log pi - log ref) of the sampled tokens, and log pi of the
    completion. -> ([N], [N], [N])."""
    dev = next(policy.parameters()).device
    if dev.type == "cpu":  # [rows, T, V] log-probs that fit the caches: at 4096 classes 32 rows ran 1.9x faster
        batch_size = min(batch_size, CPU_KL_ROWS)  # than 128 (tiny eval, one thread; measured)
    exact, mc, logp = [], [], []
    for j in range(0, len(prompts), batch_size):
        ids, attn, resp = completion_batch(prompts[j : j + batch_size], completions[j : j + batch_size], pad_id, dev)
        # fp32 even on CUDA: this is the measurement, and bf16 logits would blur small per-token KLs
        # each model's log-softmax once: the KL and the sampled tokens' log-probs both read it (it is most of
        # the cost here, 4096 classes at every position)
        lp = F.log_softmax(policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), dim=-1)
        policy_logp = (target_logprobs(lp, ids[:, 1:]) * resp).sum(1)
        logp.append(policy_logp.cpu())
        if ref is policy:  # the SFT model against itself: both KLs are 0, no second pass
            exact.append(torch.zeros(len(ids)))
            mc.append(torch.zeros(len(ids)))
            continue
        lq = F.log_softmax(ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), dim=-1)
        exact.append((kl_of_logprobs(lp, lq) * resp).sum(1).cpu())
        mc.append((policy_logp - (target_logprobs(lq, ids[:, 1:]) * resp).sum(1)).cpu())
    return torch.cat(exact), torch.cat(mc), torch.cat(logp)


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)
