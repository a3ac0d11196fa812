"""What every TRL-trained stage adds to its trainer."""

import math


def stop_on_non_finite_loss():
    """A TrainerCallback that stops training with an error naming the step when a logged loss is NaN or inf.

    The trainer must log with logging_nan_inf_filter=False (transformers otherwise replaces a non-finite loss
    by the running mean and trains on). The stage then exits non-zero: the checkpoints saved before the step
    stay in its unfinished folder and the stage is not marked finished."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {state.global_step}; stopping (checkpoints "
                                         f"up to the previous save are kept in {args.output_dir})")

    return StopOnNonFiniteLoss()


def trainer_device_args() -> dict:
    """TrainingArguments for this process's device: bf16 on CUDA, fp32 on the CPU (TRL defaults to bf16)."""
    from core import dist

    cpu = dist.on_cpu()
    return {"bf16": not cpu, "use_cpu": cpu, "dataloader_num_workers": 0}
