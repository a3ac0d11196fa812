"""python -m pipelines {run,show,list,reference} ..."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from . import config as config_mod
from core import data

from . import devices, graph, hub, reference, signals, source, stages, store, tune
from . import ladder as ladder_mod
from .config import ConfigError
from core.job import disk_full

REPO_DOCS = Path(__file__).resolve().parent.parent / "docs"

log = logging.getLogger("pipelines")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad input
        sys.stderr.write(f"error: {message} (see python -m pipelines --help)\n")
        raise SystemExit(2)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        sys.stderr.write(f"error: {name}={value!r}: expected a whole number >= 1\n")
        raise SystemExit(2)
    return int(value)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipelines", description="RLHF vs DPO benchmarks")
    p.add_argument("--config", type=Path, default=config_mod.DEFAULT_FILE, help="benchmarks file")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug output")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a benchmark's stages, skipping finished ones")
    r.add_argument("benchmark")
    r.add_argument("--scale", help="named scale (default: the benchmark's default_scale)")
    r.add_argument("--stages", help=f"comma-separated subset of: {','.join(stages.STAGES)}")
    r.add_argument("--force", action="store_true", help="rerun the selected stages even if finished")
    r.add_argument("--seeds", type=int, help="training seeds per method run (default: the scale's `seeds`); "
                                             "1 for a quick look, no verdict")
    r.add_argument("--seed", type=int, help="another instance of the benchmark: every split, sample and "
                   "initialisation drawn from this seed (default: the scale's `seed`, 0); its runs go to "
                   "<scale>-seed<N>/ beside the default's")
    r.add_argument("--methods", help="comma-separated methods to put on the frontier, or 'all' (default: the "
                                     "benchmark's `methods`, the paper's methods); see docs/methods.md")
    r.add_argument("--nproc", type=int,
                   help="processes per training / sampling stage (accelerate launch; DDP unless --accelerate-config); "
                        "default: all workers for sft, pairs and eval, one for the stages that run side by side")
    r.add_argument("--workers", type=int, default=_env_int("PIPELINES_WORKERS"),
                   help="processes kept busy at once, stages side by side (default: $PIPELINES_WORKERS, else on a "
                        "CPU its cores over the scale's torch_threads, with a GPU 1). --workers 1: one stage at a time")
    r.add_argument("--accelerate-config", type=Path,
                   help="an accelerate config file, e.g. configs/accelerate/{ddp,fsdp,zero2,zero3}.yaml")
    r.add_argument("--device", default=os.environ.get("PIPELINES_DEVICE") or None,
                   help="cpu, cuda, cuda:1, mps (default: $PIPELINES_DEVICE, else the GPU when there is one, else "
                        "the CPU); checked before any stage starts")
    t = sub.add_parser("tune", help="choose a method's learning rate (or PPO's start KL coefficients) on the tune "
                                    "split (docs/tuning-<scale>.md)")
    t.add_argument("benchmark")
    t.add_argument("--scale", help="named scale (default: the benchmark's default_scale)")
    t.add_argument("--method", required=True, help="the method to tune (docs/methods.md)")
    t.add_argument("--setting", default="lr",
                   help="what the trials scale: lr (the method's learning rate(s); the choice: the highest front "
                        "area among the trials that reach the largest KL budget) or starts (PPO's start KL "
                        "coefficients, --method ppo, scales with 1; per target: x1 where it lands within 25%%, else "
                        "the nearest landing); default lr")
    t.add_argument("--scales", default=",".join(f"{x:g}" for x in tune.DEFAULT_SCALES),
                   help="the trials: the setting times each of these (default 0.5,1,2)")
    t.add_argument("--docs", type=Path, default=REPO_DOCS, help="where tuning-<scale>.md is written (default: docs/)")
    t.add_argument("--write", action="store_true", help="also write the choice into the benchmarks file")
    t.add_argument("--workers", type=int, default=_env_int("PIPELINES_WORKERS"),
                   help="processes kept busy at once (as for run)")
    s = sub.add_parser("show", help="print the resolved config")
    s.add_argument("benchmark")
    s.add_argument("--scale")
    sub.add_parser("list", help="benchmarks, scales and stages")
    ref = sub.add_parser("reference", help="print the config reference (docs/config.md)")
    ref.add_argument("--docs", type=Path, help="instead, write the folder's config.md and the table of its methods.md")
    return p


def main(argv: list[str] | None = None) -> int:
    signals.handle_signals()
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return _dispatch(args)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except graph.StageFailed as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except OSError as e:  # the spine's own writes (manifests, published results, the lock) on a full disk
        full = disk_full(e, store.runs_dir())
        if not full:
            raise
        sys.stderr.write(f"error: {full}: free some and run the same command again (finished stages are kept)\n")
        return 1
    except graph.Interrupted as e:
        during = f" during stage{'s' if ',' in e.stage else ''} {e.stage}" if e.stage else ""
        sys.stderr.write(f"interrupted by {e}{during}; finished stages are kept: run the same command again to "
                         f"resume\n")
        return 128 + e.signum


def _tune(args) -> int:
    try:
        scales = tuple(float(x) for x in args.scales.split(","))
    except ValueError:
        raise ConfigError(f"tune --scales {args.scales!r}: allowed: positive numbers separated by commas, e.g. "
                          f"0.5,1,2") from None
    cfg = config_mod.load(args.benchmark, args.scale, args.config)
    tune.check(cfg, args.method, scales, args.setting)
    root = store.run_root(cfg.benchmark, f"{cfg.scale}-tune")
    launch, source_id = _preflight(cfg, graph.Launch(workers=args.workers), root)
    tune.run(cfg, args.method, scales, config_mod.protocol(args.benchmark, args.config), launch, source_id, args.docs,
             args.config if args.write else None, args.setting)
    return 0


def _preflight(cfg, launch, root, only: list[str] | None = None):
    """Every check before a run writes anything, each one line: the device (and a sharding config it cannot run), the
    run folder, the data source, the stages, the hub. -> (the launch resolved for the scale, the source's id)."""
    launch.check_sharding(devices.check(launch.device))  # first of the checks that need this machine
    store.check_run_dir(root)
    data.check_source(cfg.data.source)
    launch = launch.resolved(cfg.torch_threads)
    graph.check(cfg, only, launch, graph.stage_folders(root))
    hub.check_hub(cfg)
    return launch, source.check(cfg)  # the last check: once the source passes, it is remembered in RUN_DIR/.cache


def _dispatch(args) -> int:
    if args.command == "tune":
        return _tune(args)
    if args.command == "reference":
        if not args.docs:
            print(reference.reference_markdown())
            return 0
        methods = args.docs / "methods.md"
        if not methods.is_file():
            raise ConfigError(f"--docs {args.docs}: no methods.md there (its table is made in place); allowed: the "
                              f"repository's docs folder")
        page = reference.methods_markdown(methods.read_text(), args.config)  # checked before anything is written
        store.write_text_atomic(args.docs / "config.md", reference.reference_markdown())
        store.write_text_atomic(methods, page)
        return 0
    if args.command == "list":
        doc = config_mod.read_toml(args.config)
        for b in config_mod.benchmark_names(doc):
            print(f"{b}: scales {', '.join(config_mod.scale_names(doc, b))} "
                  f"(default {config_mod.default_scale(b, args.config)})")
        print("stages: " + " -> ".join(stages.STAGES))
        return 0
    if config_mod.is_ladder(config_mod.read_toml(args.config), args.benchmark):
        return _ladder(args)
    base = config_mod.load(args.benchmark, args.scale, args.config)
    cfg = _overridden(base, args)
    instance = cfg.seed if cfg.seed != base.seed else None  # --seed of the file's own seed: the default instance
    if args.command == "show":
        print(json.dumps(config_mod.dataclasses.asdict(cfg), indent=2))
        return 0
    only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    if only is not None and not only:
        raise ConfigError("--stages is empty; give stage names separated by commas")
    root = store.run_root(cfg.benchmark, cfg.scale, instance)
    launch, source_id = _preflight(cfg, graph.Launch(args.nproc, args.accelerate_config, args.device, args.workers),
                                   root, only)
    log.info("benchmark %s, scale %s (choose another with --scale, or SCALE=... with make), seed %d; runs in %s",
             cfg.benchmark, cfg.scale, cfg.seed, root)
    root = graph.run(cfg, only, args.force, config_mod.protocol(args.benchmark, args.config), launch,
                     source_id, root=root)
    for name in ("frontier.png", "frontier.csv", "report.md", "report.html"):
        if (root / name).exists():
            log.info("result: %s", root / name)
    return 0


def _overridden(cfg, args):
    """cfg with --seed, --seeds and --methods."""
    if getattr(args, "seed", None) is not None:
        cfg = config_mod.with_seed(cfg, args.seed)
    if getattr(args, "seeds", None) is not None:
        cfg = config_mod.with_seeds(cfg, args.seeds)
    if getattr(args, "methods", None) is not None:
        cfg = config_mod.with_methods(cfg, [m.strip() for m in args.methods.split(",") if m.strip()])
    return cfg


def _ladder(args) -> int:
    """A ladder benchmark (imdb-scaling): every rung's whole comparison, then the scaling stage."""
    ladder = config_mod.load_ladder(args.benchmark, args.scale, args.config)
    ladder = dataclasses.replace(ladder, rungs={r: _overridden(c, args) for r, c in ladder.rungs.items()})
    if args.command == "show":
        print(json.dumps({r: dataclasses.asdict(c) for r, c in ladder.rungs.items()}, indent=2))
        return 0
    if getattr(args, "stages", None):
        raise ConfigError(f"--stages: {args.benchmark} is a ladder; it runs every rung's stages (run one rung's "
                          f"stages with its protocol benchmark, {ladder.protocol})")
    first = next(iter(ladder.rungs.values()))
    root = store.run_root(ladder.benchmark, ladder.name, getattr(args, "seed", None))
    launch = graph.Launch(args.nproc, args.accelerate_config, args.device, args.workers)
    launch.check_sharding(devices.check(launch.device))
    store.check_run_dir(root)
    data.check_source(first.data.source)
    launch = launch.resolved(first.torch_threads)
    for cfg in ladder.rungs.values():
        graph.check(cfg, None, launch)
        hub.check_hub(cfg)
    source_id = source.check(first)
    log.info("ladder %s of %s: rungs %s; runs in %s", ladder.name, ladder.benchmark, ", ".join(ladder.rungs), root)
    root = ladder_mod.run(ladder, args.force, config_mod.protocol(ladder.protocol, args.config), launch, source_id,
                          root)
    for name in ("scaling.md", "scaling.png", "scaling.csv"):
        if (root / name).exists():
            log.info("result: %s", root / name)
    return 0
