"""Model ladders for scaling-law studies: sizes -> runs -> workdirs -> one results table.

A ladder starts from a base experiment config (a `ConfigDict` of `jaxmtl.config`) and a
`LadderConfig` (the `ladder(arg)` function of a config file, next to its `get_config(arg)`):

1. `rungs`: model sizes. Each width gets a depth (`depths`, or round(width / aspect_ratio),
   as OLMo-ladder / Kaplan et al. tie depth to width) and a head count (the base config's
   `num_heads`, which jaxmtl's μP assumes is fixed; or width // head_dim under SP), its
   parameter count (`flops.model_param_count`, exact for `TransformerLM`) and its training
   FLOPs per token (`flops.model_flops_per_token`, causal attention halved).
2. `expand`: runs. Each rung is trained for each budget, given as tokens per parameter
   (D = r N, Chinchilla's 20 being compute-optimal for LLMs) or as a FLOP budget
   (D = C / FLOPs-per-token: an IsoFLOP design, Hoffmann et al. 2022, arXiv 2203.15556, sec.
   3.2); `holdout_*` adds larger runs kept out of the fit to test its extrapolation (OLMo
   ladder, Bhagia et al. 2024, arXiv 2412.04403). Learning rates carry over by μP: every run
   sets `mup.name` (default "mup") and `model.base_width` to the ladder's base width, so the one
   `optim.lr` tuned at the base width transfers (Tensor Programs V, arXiv 2203.03466). The
   schedule's length follows each run (`optim.total_steps = train.steps`), which Chinchilla
   found necessary for the fits. A config sweep (a list of override dicts, e.g. from
   `jaxmtl.launch.parse_sweep`) crosses every run.
3. `run_local`: runs one after another with `jaxmtl.train.loop.train`, which resumes from a
   workdir's checkpoints; a finished run (results.json written for its step count) is skipped.
   `launch/launch.py --ladder` emits the same runs as local / SLURM / TPU-pod jobs instead.
4. `collect`: every finished workdir under a root -> rows (N, D, C, loss, ...) -> CSV that
   `jaxmtl-fit` reads. N is the non-embedding parameter count (Kaplan et al. 2020,
   arXiv 2001.08361; OLMo's convention: everything but the input table, so the LM head
   counts), D the trained tokens, C the exact training FLOPs (C_6ND = 6 N D beside it), loss
   the held-out (eval split) bits per byte.

Every run's workdir gets `ladder_run.json` (its name, role, rung, budget, D, C) so a table can
be collected from workdirs trained anywhere.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxmtl.scaling import flops

RUN_RECORD = "ladder_run.json"
ROLES = ("fit", "holdout")
PARAMETRIZATIONS = ("mup", "depth_mup", "sp")
COMPUTE = ("exact", "6nd")
COLUMNS = ("name", "role", "width", "depth", "num_heads", "N", "N_total", "D", "C", "C_6ND",
           "tokens_per_param", "budget", "steps", "batch_size", "seq_len", "loss", "eval_loss",
           "train_loss", "seconds")


@dataclasses.dataclass(frozen=True)
class LadderConfig:
  """A model ladder and its token budgets (the `ladder(arg)` block of a config file).

  Attributes:
    widths: model widths of the fitted ladder, increasing.
    depths: depth per width (same length), or () for max(1, round(width / aspect_ratio)).
    aspect_ratio: width / depth when `depths` is empty.
    head_dim: 0 keeps the base config's `num_heads` at every width (jaxmtl's μP attention
      assumes a fixed head count); > 0 sets num_heads = width // head_dim (SP only).
    parametrization: `mup.name` of every run ("mup", "depth_mup" or "sp").
    base_width: μP base width (0: the base config's `model.width`); with "depth_mup" the
      base depth is the depth of the base width.
    tokens_per_param: budgets as D / N ratios, or
    flop_budgets: budgets as training FLOPs per run (IsoFLOP design). Exactly one is set.
    compute: what a FLOP budget counts: "exact" (`model_flops_per_token` x D) or "6nd".
    holdout_widths, holdout_budgets: extra runs (pairs, same length; budgets in the unit of
      the fitted ones) kept out of the fit; their depth follows the same rule.
    warmup_fraction: linear warmup steps as a fraction of each run's steps (>= 1 step).
    min_steps: no run is shorter (small budgets of small models get more tokens).
    checkpoints: checkpoints per run (resume granularity; the last step always saves).
  """
  widths: tuple[int, ...] = (32, 48, 64, 96, 128)
  depths: tuple[int, ...] = ()
  aspect_ratio: float = 32.0
  head_dim: int = 0
  parametrization: str = "mup"
  base_width: int = 0
  tokens_per_param: tuple[float, ...] = (5.0, 10.0, 20.0)
  flop_budgets: tuple[float, ...] = ()
  compute: str = "exact"
  holdout_widths: tuple[int, ...] = ()
  holdout_budgets: tuple[float, ...] = ()
  warmup_fraction: float = 0.05
  min_steps: int = 20
  checkpoints: int = 2

  def __post_init__(self):
    def bad(key, msg):
      raise ValueError(f"ladder.{key}: {msg}")
    if not self.widths or any(not isinstance(w, int) or w <= 0 for w in self.widths):
      bad("widths", f"expected positive ints, got {self.widths!r}")
    if self.depths and len(self.depths) != len(self.widths):
      bad("depths", f"needs one depth per width ({len(self.widths)}), got {self.depths!r}")
    if any(d <= 0 for d in self.depths):
      bad("depths", f"expected positive ints, got {self.depths!r}")
    if not self.aspect_ratio > 0:
      bad("aspect_ratio", f"must be > 0, got {self.aspect_ratio!r}")
    if self.parametrization not in PARAMETRIZATIONS:
      bad("parametrization", f"invalid value {self.parametrization!r}; valid choices: "
          f"{', '.join(PARAMETRIZATIONS)}")
    if self.head_dim and self.parametrization != "sp":
      bad("head_dim", "a head count that grows with width needs parametrization='sp': "
          "jaxmtl's μP attention scale assumes the base config's num_heads at every width")
    if self.compute not in COMPUTE:
      bad("compute", f"invalid value {self.compute!r}; valid choices: {', '.join(COMPUTE)}")
    if bool(self.tokens_per_param) == bool(self.flop_budgets):
      bad("tokens_per_param", "give budgets as tokens_per_param or as flop_budgets (exactly "
          f"one), got {self.tokens_per_param!r} and {self.flop_budgets!r}")
    if any(not b > 0 for b in self.budgets):
      bad(self.budget_kind, f"budgets must be > 0, got {self.budgets!r}")
    if len(self.holdout_widths) != len(self.holdout_budgets):
      bad("holdout_budgets", f"needs one budget per holdout width, got "
          f"{self.holdout_widths!r} and {self.holdout_budgets!r}")
    if any(not b > 0 for b in self.holdout_budgets):
      bad("holdout_budgets", f"must be > 0, got {self.holdout_budgets!r}")
    if not 0 <= self.warmup_fraction < 1:
      bad("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction!r}")
    if self.min_steps < 1 or self.checkpoints < 1:
      bad("min_steps", f"min_steps and checkpoints must be >= 1, got {self.min_steps}, "
          f"{self.checkpoints}")

  @property
  def budget_kind(self) -> str:
    return "flop_budgets" if self.flop_budgets else "tokens_per_param"

  @property
  def budgets(self) -> tuple[float, ...]:
    return tuple(self.flop_budgets or self.tokens_per_param)

  def depth_of(self, width: int) -> int:
    if self.depths and width in self.widths:
      return self.depths[self.widths.index(width)]
    return max(1, int(math.floor(width / self.aspect_ratio + 0.5)))


@dataclasses.dataclass(frozen=True)
class Rung:
  """One model size: its shape, exact parameter count and training FLOPs per token."""
  width: int
  depth: int
  num_heads: int
  params: flops.ParamCount
  flops_per_token: float

  @property
  def n(self) -> int:
    """Non-embedding parameters (what the fits call N)."""
    return self.params.non_embedding

  @property
  def name(self) -> str:
    return f"w{self.width}_d{self.depth}"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a ladder: a rung trained on `tokens` tokens in `steps` steps.

  overrides: {"model.width": 64, ...} for `jaxmtl.config.apply_overrides` / `--config.` flags.
  """
  name: str
  role: str
  rung: Rung
  budget: float
  budget_kind: str
  steps: int
  batch_size: int
  seq_len: int
  overrides: Mapping[str, Any]

  @property
  def tokens(self) -> int:
    return self.steps * self.batch_size * self.seq_len

  @property
  def compute(self) -> float:
    return self.rung.flops_per_token * self.tokens

  @property
  def compute_6nd(self) -> float:
    return 6.0 * self.rung.n * self.tokens

  def record(self) -> dict[str, Any]:
    """The JSON record written to the run's workdir (`ladder_run.json`)."""
    return {"name": self.name, "role": self.role, "width": self.rung.width,
            "depth": self.rung.depth, "num_heads": self.rung.num_heads, "N": self.rung.n,
            "N_total": self.rung.params.total, "flops_per_token": self.rung.flops_per_token,
            "budget": self.budget, "budget_kind": self.budget_kind, "steps": self.steps,
            "batch_size": self.batch_size, "seq_len": self.seq_len, "D": self.tokens,
            "C": self.compute, "C_6ND": self.compute_6nd, "overrides": dict(self.overrides)}


def ladder_config(block: Mapping[str, Any] | None) -> LadderConfig:
  """A `ladder` ConfigDict / dict -> validated LadderConfig (errors name `config.ladder.*`)."""
  from jaxmtl import config as config_lib
  return config_lib.to_dataclass(LadderConfig, block, "config.ladder")


def seq_len_of(base: Any) -> int:
  """Tokens per example of the base config's dataset (its LM input length)."""
  from jaxmtl import tasks as tasks_lib
  spec = tasks_lib.data_spec(base.data.name, base.data.data_dir or None)
  if not spec.tasks or spec.tasks[0].kind != "lm":
    raise ValueError(f"config.data.name={base.data.name!r} is not a language-modelling "
                     "dataset; a ladder trains LMs (e.g. 'jaxmtl_bytes/stdlib_seq128')")
  return int(spec.input_shape[0])


def _model_cfg(base: Any):
  from jaxmtl import config as config_lib
  exp = config_lib.experiment_config(base)
  if exp.model.name != "transformer":
    raise ValueError(f"config.model.name={exp.model.name!r}: a ladder needs the 'transformer' "
                     "family")
  return exp


def rung(model: Any, width: int, depth: int, spec: LadderConfig, seq_len: int) -> Rung:
  """The rung of `width`/`depth` from the base `ModelConfig` (its other fields kept)."""
  heads = width // spec.head_dim if spec.head_dim else model.num_heads
  if heads < 1 or width % heads:
    raise ValueError(f"ladder width {width} is not divisible by num_heads {heads} "
                     f"(head_dim={spec.head_dim})")
  if (width // heads) % 2:  # TransformerLM's RoPE rotates half-dimensions
    raise ValueError(f"ladder width {width} with {heads} heads has head dim {width // heads}; "
                     "the transformer's rotary embedding needs an even head dim")
  kv = model.num_kv_heads
  if kv and heads % kv:
    raise ValueError(f"ladder width {width}: num_heads {heads} is not a multiple of "
                     f"num_kv_heads {kv}")
  m = dataclasses.replace(model, width=width, depth=depth, num_heads=heads)
  return Rung(width, depth, heads, flops.model_param_count(m),
              flops.model_flops_per_token(m, seq_len))


def rungs(base: Any, spec: LadderConfig, seq_len: int | None = None) -> list[Rung]:
  """The fitted ladder's rungs (in `spec.widths` order) from the base ConfigDict."""
  exp = _model_cfg(base)
  seq_len = seq_len_of(base) if seq_len is None else seq_len
  return [rung(exp.model, w, spec.depth_of(w), spec, seq_len) for w in spec.widths]


def _budget_label(kind: str, b: float) -> str:
  return f"tpp{b:g}" if kind == "tokens_per_param" else f"C{b:.3g}".replace("+", "")


def expand(base: Any, spec: LadderConfig, sweep: Sequence[Mapping[str, Any]] | None = None,
           seq_len: int | None = None) -> list[Run]:
  """All runs: fitted rungs x budgets, then the holdout runs, each crossed with `sweep`.

  Steps = max(min_steps, round(D / (batch_size * seq_len))) with D = r N or C / (FLOPs per
  token) (C / (6 N) under compute="6nd"); a run's tokens are its steps' tokens. Names:
  `w64_d2_tpp20` (+ `,key=value` per sweep entry).
  """
  exp = _model_cfg(base)
  seq_len = seq_len_of(base) if seq_len is None else seq_len
  batch = exp.data.batch_size
  base_width = spec.base_width or exp.model.width
  base_depth = spec.depth_of(base_width)
  plan = [("fit", w, b) for w in spec.widths for b in spec.budgets]
  plan += [("holdout", w, b) for w, b in zip(spec.holdout_widths, spec.holdout_budgets)]
  runs = []
  for role, width, budget in plan:
    r = rung(exp.model, width, spec.depth_of(width), spec, seq_len)
    if spec.budget_kind == "tokens_per_param":
      tokens = budget * r.n
    else:
      tokens = budget / (r.flops_per_token if spec.compute == "exact" else 6.0 * r.n)
    steps = max(spec.min_steps, int(round(tokens / (batch * seq_len))))
    over = {"model.width": width, "model.depth": r.depth, "model.num_heads": r.num_heads,
            "model.base_width": base_width, "mup.name": spec.parametrization,
            "train.steps": steps, "optim.total_steps": steps,
            "optim.warmup_steps": max(1, int(round(spec.warmup_fraction * steps))),
            "train.eval_every": steps, "train.log_every": max(1, min(50, steps // 10)),
            "train.checkpoint_every": max(1, math.ceil(steps / spec.checkpoints))}
    if spec.parametrization == "depth_mup":
      over["mup.base_depth"] = base_depth
    name = f"{r.name}_{_budget_label(spec.budget_kind, budget)}"
    for extra in (sweep or [{}]):
      suffix = "".join(f",{k}={v}" for k, v in extra.items())
      runs.append(Run(name + suffix, role, r, float(budget), spec.budget_kind, steps, batch,
                      seq_len, {**over, **extra}))
  names = [r.name for r in runs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"ladder runs {dup} appear twice (repeated widths or budgets?)")
  return runs


def run_config(base: Any, run: Run):
  """The run's ConfigDict: a copy of `base` with the run's overrides applied."""
  from jaxmtl import config as config_lib
  from jaxmtl.launch import parse_value  # sweep values may be command-line strings
  c = base.copy_and_resolve_references()
  config_lib.apply_overrides(c, {k: parse_value(v) for k, v in run.overrides.items()})
  return c


def status(workdir: str | pathlib.Path, steps: int) -> str:
  """'done' (results.json written after `steps` steps), 'partial' (checkpoints) or 'new'."""
  workdir = pathlib.Path(workdir)
  cfg_file = workdir / "config.json"
  if (workdir / "results.json").exists() and cfg_file.exists():
    try:
      if json.loads(cfg_file.read_text())["train"]["steps"] == steps:
        return "done"
    except (KeyError, TypeError, ValueError):
      pass
  ckpts = workdir / "checkpoints"
  if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
    return "partial"
  return "new"


def write_record(workdir: str | pathlib.Path, run: Run, **extra: Any) -> pathlib.Path:
  path = pathlib.Path(workdir) / RUN_RECORD
  path.parent.mkdir(parents=True, exist_ok=True)
  old = json.loads(path.read_text()) if path.exists() else {}
  path.write_text(json.dumps({**run.record(), "seconds": old.get("seconds", 0.0), **extra},
                             indent=2, sort_keys=True))
  return path


def run_local(base: Any, runs: Sequence[Run], root: str | pathlib.Path, *,
              progress: bool = True, train_fn: Callable | None = None,
              log: Callable[[str], None] = print) -> dict[str, str]:
  """Trains `runs` one after another under `root/<run.name>`; returns {name: what happened}.

  Finished runs are skipped ('skipped'); a run with checkpoints resumes ('resumed'); others
  start ('trained'). Wall seconds accumulate in each `ladder_run.json`. `train_fn(cfg,
  workdir)` defaults to `jaxmtl.train.loop.train`.
  """
  from tqdm import tqdm
  from jaxmtl import config as config_lib
  if train_fn is None:
    from jaxmtl.train import loop
    train_fn = loop.train
  root = pathlib.Path(root)
  done: dict[str, str] = {}
  bar = tqdm(runs, desc="ladder", unit="run", disable=not progress, dynamic_ncols=True)
  for run in bar:
    bar.set_postfix_str(run.name)
    workdir = root / run.name
    state = status(workdir, run.steps)
    if state == "done":
      done[run.name] = "skipped"
      continue
    cfg = config_lib.experiment_config(run_config(base, run))
    write_record(workdir, run)
    t0 = time.perf_counter()
    train_fn(cfg, workdir)
    rec = json.loads((workdir / RUN_RECORD).read_text())
    write_record(workdir, run, seconds=rec.get("seconds", 0.0) + time.perf_counter() - t0)
    done[run.name] = "resumed" if state == "partial" else "trained"
    log(f"{run.name}: {done[run.name]} in {time.perf_counter() - t0:.1f} s "
        f"(N={run.rung.n}, D={run.tokens}, C={run.compute:.3g})")
  return done


def _metric(results: Mapping[str, Any], suffix: str) -> float:
  vals = [v for k, v in results.items() if k.endswith(suffix)]
  return float(sum(vals) / len(vals)) if vals else float("nan")


def collect(root: str | pathlib.Path) -> list[dict[str, Any]]:
  """One row per finished run under `root` (a directory with results.json and
  ladder_run.json), sorted by (role, N, D). The loss is the eval bits per byte (the mean over
  LM tasks), or the eval loss in nats for datasets without one."""
  from jaxmtl.models import ModelConfig
  from jaxmtl import config as config_lib
  rows = []
  for rec_path in sorted(pathlib.Path(root).glob(f"*/{RUN_RECORD}")):
    wd = rec_path.parent
    if not (wd / "results.json").exists():
      continue
    rec = json.loads(rec_path.read_text())
    res = json.loads((wd / "results.json").read_text())
    cfg = json.loads((wd / "config.json").read_text())
    model = config_lib.to_dataclass(ModelConfig, cfg["model"], "config.model")
    pc = flops.model_param_count(model)  # what was trained, whatever the record says
    steps, batch = cfg["train"]["steps"], cfg["data"]["batch_size"]
    d = steps * batch * rec["seq_len"]
    c = flops.model_flops_per_token(model, rec["seq_len"]) * d
    bpb = _metric(res["eval"], "/bpb")
    rows.append({
        "name": rec["name"], "role": rec["role"], "width": model.width, "depth": model.depth,
        "num_heads": model.num_heads, "N": pc.non_embedding, "N_total": pc.total, "D": d,
        "C": c, "C_6ND": 6.0 * pc.non_embedding * d,
        "tokens_per_param": d / pc.non_embedding, "budget": rec["budget"], "steps": steps,
        "batch_size": batch, "seq_len": rec["seq_len"],
        "loss": bpb if math.isfinite(bpb) else _metric(res["eval"], "/loss"),
        "eval_loss": _metric(res["eval"], "/loss"),
        "train_loss": float(res["train"].get("loss", float("nan"))),
        "seconds": rec.get("seconds", float("nan"))})
  rows.sort(key=lambda r: (ROLES.index(r["role"]) if r["role"] in ROLES else 9, r["N"], r["D"]))
  return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
  """Rows -> CSV with `COLUMNS` (what `jaxmtl-fit --data` reads: N, D, C, loss, ...)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow(r)
  return path


def load_ladder(config: str) -> tuple[Any, LadderConfig]:
  """(base ConfigDict, LadderConfig) of a config file `file.py[:arg]` with `get_config(arg)`
  and `ladder(arg)`."""
  import importlib.util
  from jaxmtl import config as config_lib
  file, _, arg = config.partition(":")
  path = pathlib.Path(file)
  spec = importlib.util.spec_from_file_location(path.stem, file)
  if spec is None or spec.loader is None or not path.exists():
    raise ValueError(f"config file {file!r} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "ladder"):
    raise ValueError(f"{file} has no ladder(arg) function returning the ladder block")
  base = config_lib.load_config_file(config)
  return base, ladder_config(module.ladder(arg) if arg else module.ladder())
