"""wandb tracking. Every stage logs; one wandb group per `python -m pipelines run` (one `make imdb-sentiment`).

The spine picks the mode once (job_tracking) and hands it, the project and the group to every stage in its
job. Mode: WANDB=off or WANDB_MODE=disabled turns tracking off; WANDB_MODE=online / offline is obeyed;
otherwise online when wandb has an API key (WANDB_API_KEY or ~/.netrc), else offline: never a login prompt,
never a network wait. Offline runs land in wandb/offline-run-* (WANDB_DIR moves them); `make wandb-sync`
uploads them.

Names: group = <benchmark>-<scale>-<time>; job_type = the stage, or for a training run its method and parameter
(dpo-beta0.1, ppo-gt-kl3: its training seeds side by side); name = that and the seed (dpo-beta0.1-seed1) for a
training run, the stage's name otherwise; tags = scale, method or stage.
Metrics: train/* against train/global_step (the key TRL's trainers use, so every training run reads alike),
eval/<run>/* against the training step of the checkpoint.
"""

from __future__ import annotations

import netrc
import os
import time
from pathlib import Path

DEFAULT_PROJECT = "rlhf-vs-dpo"


def tracking_mode() -> str:
    """'online', 'offline' or 'disabled', from the environment and whether wandb knows an API key."""
    if os.environ.get("WANDB", "").lower() in ("off", "0", "false", "no", "disabled") or \
            os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return "disabled"
    if os.environ.get("WANDB_MODE", "").lower() in ("online", "offline"):
        return os.environ["WANDB_MODE"].lower()
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def job_tracking(benchmark: str, scale: str) -> dict:
    """What every stage of one pipeline run needs to log into the same group."""
    return {"mode": tracking_mode(), "project": os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            "group": f"{benchmark}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}"}


def enabled(job) -> bool:
    return job.tracking.get("mode", "disabled") != "disabled"


def start(job, name: str | None = None, method: str | None = None, params: dict | None = None,
          job_type: str | None = None):
    """A wandb run for this stage (or one of its method runs); None when tracking is off, and on all but the
    main process when the stage runs as several. job_type (default: the stage): a method run's sweep point
    (dpo-beta0.1), so its training seeds are grouped together in the group's view."""
    from core import dist

    if not enabled(job) or not dist.is_main():
        return None
    import wandb

    run = wandb.init(
        project=job.tracking["project"], group=job.tracking["group"], job_type=job_type or job.stage, name=name or job.stage,
        config={**job.config, "benchmark": job.benchmark, "scale": job.scale, "stage": job.stage,
                **({"rung": job.tracking["rung"]} if "rung" in job.tracking else {}),  # a ladder's (imdb-scaling)
                **({"method": method} if method else {}), **(params or {})},
        tags=[job.scale, method or job.stage, *([job.tracking["rung"]] if "rung" in job.tracking else [])],
        mode=job.tracking["mode"], dir=os.environ.get("WANDB_DIR"),
        settings=wandb.Settings(console="off", silent=True), reinit="finish_previous")
    run.define_metric("train/global_step")
    run.define_metric("train/*", step_metric="train/global_step")
    run.define_metric("eval/*", step_metric="train/global_step")
    return run


def report_to(job) -> list[str]:
    """TRL / transformers `report_to`: their own wandb callback logs into the run start() opened."""
    return ["wandb"] if enabled(job) else []


def log_train(run, step: int, metrics: dict) -> None:
    if run is not None:
        run.log({"train/global_step": step, **{f"train/{k}": v for k, v in metrics.items()}})


def end(run, summary: dict | None = None) -> None:
    if run is not None:
        if summary:
            run.summary.update(summary)
        run.finish()


def table(columns: list[str], rows: list[list]):
    import wandb

    return wandb.Table(columns=columns, data=rows)


def image(path: Path, caption: str = ""):
    import wandb

    return wandb.Image(str(path), caption=caption)


def scatter(tab, x: str, y: str, title: str):
    import wandb

    return wandb.plot.scatter(tab, x, y, title=title)


def html(text: str):
    import wandb

    return wandb.Html(text)
