"""What every TRL-trained stage adds to its trainer."""

import math
import os
import signal


def stop_on_non_finite_loss():
    """A TrainerCallback that stops training with an error naming the step when a logged loss is NaN or inf.

    The trainer must log with logging_nan_inf_filter=False (transformers otherwise replaces a non-finite loss
    by the running mean and trains on). It also carries the resume tests' fault hook: with
    PIPELINES_KILL_AFTER_CHECKPOINT set, the process dies right after saving the checkpoint that path ends with. The stage then exits non-zero: the checkpoints saved before the step
    stay in its unfinished folder and the stage is not marked finished."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {state.global_step}; stopping (checkpoints "
                                         f"up to the previous save are kept in {args.output_dir})")

        def on_save(self, args, state, control, **kwargs):  # the resume tests' fault hook, as core/resume.py's
            fault = os.environ.get("PIPELINES_KILL_AFTER_CHECKPOINT")
            if fault and f"{args.output_dir}/checkpoint-{state.global_step}".endswith(fault):
                os.kill(os.getpid(), signal.SIGKILL)

    return StopOnNonFiniteLoss()


def save_at(steps):
    """A TrainerCallback that saves (and evaluates) at these optimiser steps too, beside save_steps' (a pair method's
    early_checkpoints)."""
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in steps:
                control.should_save = control.should_evaluate = True

    return SaveAt()


def save_last_checkpoint(trainer, folder, every: int) -> bool:
    """A TRL trainer saves checkpoint-<step> every `every` optimiser steps; eval reads every checkpoint, so the last
    step is saved too where it is not one of those and the trainer did not save it itself (transformers 5 saves
    and evaluates the last step of a step-based schedule). -> whether it was saved here."""
    step = trainer.state.global_step
    if step % every == 0 or (folder / f"checkpoint-{step}").is_dir():
        return False
    trainer.save_model(str(folder / f"checkpoint-{step}"))
    return True


def run_trainer(trainer, checkpoints):
    """trainer.train(), resumed from the newest checkpoint-<step> in the folder `checkpoints` (a killed run goes on
    from there). Under an FSDP launch on the CPU the trainer shards too (core.dist.fsdp_on_cpu; its arguments reset
    accelerate's state when they were made, so the switch comes after the trainer is). -> what train() returns."""
    from core import dist, resume

    if dist.fsdp_on_cpu():
        trainer.is_fsdp_enabled = True  # transformers' Trainer read it off the state it made; it prepares with FSDP2
    return trainer.train(resume_from_checkpoint=resume.latest_trainer_checkpoint(checkpoints))


def bf16() -> bool:
    """The precision rule of every training stage: bf16 on CUDA, fp32 elsewhere (CPU, mps)."""
    from core import dist

    return dist.device().type == "cuda"


def trainer_args(job) -> dict:
    """TrainingArguments every TRL stage shares: this process's device (TRL defaults to bf16, which the CPU must
    not get) and the [train] rules (gradient clipping)."""
    from core import dist

    return {"bf16": bf16(), "use_cpu": dist.on_cpu(), "dataloader_num_workers": 0,
            "max_grad_norm": job.section("train").max_grad_norm,
            # TRL turns it on by default: recomputing each block's forward in the backward saves memory these models
            # do not need and costs time (measured +12% a training step on the tiny model). The same computation,
            # but SFT's dropout draws from the random stream in another order: a fresh run's models differ from
            # those of a run made before this (config hashes are unchanged, so finished stages are kept)
            "gradient_checkpointing": False}


def loop_accelerator():
    """The Accelerator of our own loops (PPO, the pairs loop): this process's device, DDP when launched as several
    (FSDP2 under an FSDP config, on the CPU too), bf16 autocast by the same rule as the TRL stages."""
    from accelerate import Accelerator

    from core import dist

    dist.fsdp_on_cpu()
    return Accelerator(cpu=dist.on_cpu(), mixed_precision="bf16" if bf16() else "no")
