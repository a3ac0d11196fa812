"""The benchmark config, read from benchmarks.toml.

A benchmark is a table holding the paper's protocol; each named scale under `scales` overrides some of its keys, and
a section's unset keys are taken from the section it inherits from (core/methods.py). The merged table is checked
field by field against the schema (core/config.py). A ladder benchmark (imdb-scaling) is a benchmark of rungs.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.config import SECTIONS, BenchmarkConfig, ConfigError, build, check_scalar, note_fields
from core.methods import inherits

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "benchmarks.toml"
# Benchmark and scale names become folders (runs/<benchmark>/<scale>): no separators, no "." or "..".
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

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
    for name, parent in inherits().items():  # what they do not set is their parent's
        own = merged.get(name, {})
        if isinstance(own, dict) and isinstance(merged.get(parent), dict):
            own_rates = "betas" in own or "learning_rate" in own  # then [dpo]'s per-beta rates are not its own
            keys = {f.name for f in dataclasses.fields(SECTIONS[name])}
            inherited = {k: v for k, v in merged[parent].items()
                         if k in keys and k != "tuned" and not (own_rates and k == "learning_rates")}
            merged[name] = {**inherited, **own}
    if "benchmark" in merged or "scale" in merged:
        raise ConfigError(f"{benchmark}: 'benchmark' and 'scale' are set from the names, not as keys")
    merged.update(benchmark=benchmark, scale=scale)
    return build(BenchmarkConfig, merged, f"{benchmark}.")


def without_notes(scale_table: dict) -> dict:
    """A scale's table less its sections' notes (`tuned`, `starts_tuned`): a ladder's rungs take its settings at other
    model sizes, where nothing was tuned, so the notes of how the scale's settings were chosen do not carry over."""
    return {name: ({k: v for k, v in value.items() if k not in note_fields(name)}
                   if isinstance(value, dict) and name in SECTIONS else value)
            for name, value in scale_table.items()}


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
        one = {protocol_name: {**own, "scales": {base: _merge(_merge(without_notes(base_scales[base]), ladder),
                                                             overrides)}}}
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
        build(BenchmarkConfig, table, f"{benchmark}.", partial=True)
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
    return dataclasses.replace(cfg, seeds=check_scalar("--seeds", seeds, int, meta))


def with_seed(cfg: BenchmarkConfig, seed: int) -> BenchmarkConfig:
    """cfg as another instance of the benchmark (--seed / SEED=): every split, sample and initialisation drawn from
    `seed`, checked like the file's value."""
    meta = {f.name: f.metadata for f in dataclasses.fields(BenchmarkConfig)}["seed"]
    return dataclasses.replace(cfg, seed=check_scalar("--seed", seed, int, meta))


def with_methods(cfg: BenchmarkConfig, methods: list[str]) -> BenchmarkConfig:
    """cfg with other methods (--methods / METHODS=), checked like the file's value."""
    meta = {f.name: f.metadata for f in dataclasses.fields(BenchmarkConfig)}["methods"]
    if not methods:
        raise ConfigError(f"--methods is empty; allowed: a comma-separated list of {', '.join(meta['choices'])}")
    return dataclasses.replace(cfg, methods=[check_scalar("--methods", m, str, meta) for m in methods])


def protocol(benchmark: str, path: Path = DEFAULT_FILE) -> dict:
    """The benchmark's own table, before any scale overrides it: the paper's protocol, for the report."""
    table = dict(read_toml(path).get(benchmark, {}))
    for key in ("scales", "default_scale", "description"):
        table.pop(key, None)
    return table


def default_scale(benchmark: str, path: Path = DEFAULT_FILE) -> str | None:
    return read_toml(path).get(benchmark, {}).get("default_scale")
