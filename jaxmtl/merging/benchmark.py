"""The end-to-end merging benchmark: pretrain -> fine-tune K tasks -> merge -> table.

The shape of the 8-task ViT-B/32 experiment of task arithmetic (arXiv 2212.04089), TIES
(arXiv 2306.01708) and AdaMerging (arXiv 2310.02575, Table 1), on the embedded task suite
(`jaxmtl/data/builders/suite.py`):

1. **pretrain** one backbone (`benchmark.pretrain_data`, e.g. Fashion-MNIST);
2. **linear probe**: a head per task on the frozen pretrained features (the "pretrained"
   baseline, like the zero-shot row of the papers);
3. **fine-tune** the whole model on each task (`train.init_from` the pretrained backbone, with
   the probe head when `benchmark.lpft`: LP-FT, Kumar et al., arXiv 2202.10054);
4. **traditional MTL**: one model trained jointly on all tasks (`data.mixture`);
5. **merge** the fine-tuned backbones (every task keeps its own fine-tuned head) with the
   data-free methods of `jaxmtl.merging` and with task-/layer-wise AdaMerging (and ++), which
   learn their coefficients on the unlabeled test inputs;
6. **report** per-task test accuracy, mean ± std over `benchmark.seeds` (each seed fine-tunes,
   trains the MTL model and runs AdaMerging again; pretraining and probes are shared, like the
   single CLIP model of the papers) as `results.md` / `results.json`, a bar plot
   (`bars.png`) and the learned layer-wise coefficients (`lambdas.png`).

Every training stage runs through `jaxmtl.train.loop.train` in a directory named after a hash
of its config (and its parent's hash), under `benchmark.cache`; a stage whose `params.npz`
exists is loaded instead of trained, so re-running after a change to merging reuses the
pretrained and fine-tuned checkpoints, and an interrupted stage resumes from its checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import jaxmtl.merging as M
from jaxmtl import config as config_lib
from jaxmtl import tasks as tasks_lib
from jaxmtl.merging import io as ckpt_io
from jaxmtl.merging.task_vectors import path_str
from jaxmtl.train.combine import HEADS, split_heads

BLOCK = "benchmark"  # the config block this module reads; the rest is an experiment config

# name -> (merging function, default options). Options follow the references named in
# docs/merging.md; those of task arithmetic / TIES are AdaMerging's own baselines
# (src/main_task_arithmetic.py, src/main_ties_merging.py: lambda 0.3, TIES K=20 dis-sum).
DATA_FREE: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "weight_averaging": (M.weight_average, {}),
    "task_arithmetic": (M.task_arithmetic, {"scaling": 0.3}),
    "ties": (M.ties, {"density": 0.2, "merge": "sum", "scaling": 0.3}),
    "dare": (M.dare, {"drop_rate": 0.5, "scaling": 0.3, "uniform": "hash"}),
    "breadcrumbs": (M.breadcrumbs, {"density": 0.1, "gamma": 0.01, "scaling": 0.3}),
    "consensus": (M.consensus, {"k": 2, "tall_mask_lambda": 0.4}),
    "tsv": (M.tsv, {"scaling": 1.0}),
    "iso_c": (M.iso_c, {"scaling": 1.0}),
    "iso_cts": (M.iso_cts, {"common_space_fraction": 0.8, "scaling": 1.0}),
}
# name -> adamerging_fit options (granularity, ++, objective).
ADAMERGING: dict[str, dict[str, Any]] = {
    "adamerging_task": {"granularity": "task"},
    "adamerging_task_pp": {"granularity": "task", "plusplus": True},
    "adamerging_layer": {"granularity": "layer"},
    "adamerging_layer_pp": {"granularity": "layer", "plusplus": True},
    # An oracle: the same layer-wise coefficients trained on the test *labels* (cross-entropy),
    # the best this coefficient space can do; it separates the objective from the search.
    "adamerging_layer_supervised": {"granularity": "layer", "objective": "supervised"},
}
BASELINES = ("pretrained", "individual", "mtl")
METHODS = BASELINES + tuple(DATA_FREE) + tuple(ADAMERGING)
DISPLAY = {
    "pretrained": "Pretrained + linear probe", "individual": "Individual", "mtl": "Traditional MTL",
    "weight_averaging": "Weight averaging", "task_arithmetic": "Task arithmetic",
    "ties": "TIES-Merging", "dare": "DARE (+TA)", "breadcrumbs": "Model Breadcrumbs",
    "consensus": "Consensus (TA)", "tsv": "TSV-M", "iso_c": "Iso-C", "iso_cts": "Iso-CTS",
    "adamerging_task": "Task-wise AdaMerging", "adamerging_task_pp": "Task-wise AdaMerging++",
    "adamerging_layer": "Layer-wise AdaMerging", "adamerging_layer_pp": "Layer-wise AdaMerging++",
    "adamerging_layer_supervised": "Layer-wise, supervised (oracle)",
}
# Fields of TrainConfig that do not change what a stage computes (left out of its hash).
_UNHASHED_TRAIN = ("progress", "plot", "log_every", "eval_every", "checkpoint_every",
                   "keep_checkpoints", "async_checkpoints", "init_from")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """The `benchmark` block (durations in steps; learning rates peak values).

  tasks: suite datasets, one per task (all with one input shape). pretrain_data: the
  pretraining dataset. lpft: fine-tune from the probe head (else a fresh head).
  method_options: {method: {option: value}} overriding `DATA_FREE`'s defaults.
  adamerging_*: `jaxmtl.merging.adamerging_fit` options (official defaults).
  diagnostic_lambdas: task-arithmetic scalings at which the first seed's average accuracy,
  summed test entropy and feature norm are recorded (`entropy_vs_lambda.png`; empty: skip).
  check_acceptance: report the issue's acceptance (probe >= 15 and weight averaging >= 10
  points below individual fine-tuning), which is about the full 8-task suite.
  cache: where stages live (default `<workdir>/cache`).
  """
  tasks: tuple[str, ...] = ()
  pretrain_data: str = "jaxmtl_suite_fashion"
  pretrain_steps: int = 3000
  pretrain_lr: float = 2e-3
  finetune_steps: int = 500
  finetune_lr: float = 1e-3
  finetune_batch_size: int = 64
  mtl_steps: int = 2000
  mtl_lr: float = 1e-3
  lpft: bool = True
  probe_steps: int = 300
  probe_lr: float = 3e-2
  seeds: tuple[int, ...] = (0, 1, 2)
  methods: tuple[str, ...] = METHODS
  method_options: Any = dataclasses.field(default_factory=dict)
  adamerging_steps: int = 500
  adamerging_lr: float = 1e-3
  adamerging_batch_size: int = 16
  adamerging_clamp: bool = True
  adamerging_init: float = 0.3
  adamerging_entropy_eps: float | None = None
  diagnostic_lambdas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0)
  check_acceptance: bool = True
  cache: str = ""

  def __post_init__(self):
    if len(self.tasks) < 2:
      raise ValueError(f"tasks must name at least two datasets, got {self.tasks!r}")
    valid = BASELINES + tuple(DATA_FREE) + tuple(ADAMERGING)
    bad = [m for m in self.methods if m not in valid]
    if bad:
      raise ValueError(f"unknown method(s) {bad}; valid: {list(valid)}")
    bad = [m for m in dict(self.method_options) if m not in DATA_FREE]
    if bad:
      raise ValueError(f"method_options for unknown data-free method(s) {bad}; valid: "
                       f"{list(DATA_FREE)}")
    if not self.seeds:
      raise ValueError("seeds must hold at least one seed")


def split_config(c: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict,
                                                        BenchmarkConfig]:
  """(the experiment ConfigDict without `benchmark`, the validated BenchmarkConfig)."""
  if BLOCK not in c:
    raise config_lib.ConfigError(f"config has no {BLOCK!r} block; see configs/merge_benchmark.py")
  base = copy.deepcopy(c)
  block = base[BLOCK]
  with base.unlocked():
    del base[BLOCK]
  return base, config_lib.to_dataclass(BenchmarkConfig, block, f"config.{BLOCK}")


# ------------------------------------------------------------------------------ stages


def _stage_hash(cfg: config_lib.ExperimentConfig, parent: str) -> str:
  train = dataclasses.replace(cfg.train, **{k: getattr(config_lib.TrainConfig(), k)
                                            for k in _UNHASHED_TRAIN})
  payload = config_lib.to_json(dataclasses.replace(cfg, train=train)) + "|" + parent
  return hashlib.sha256(payload.encode()).hexdigest()[:12]


def stage_config(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                 ) -> config_lib.ExperimentConfig:
  c = copy.deepcopy(base)
  config_lib.apply_overrides(c, dict(overrides))
  return config_lib.experiment_config(c)


def save_params(path: pathlib.Path, tree: Any) -> None:
  """A params pytree (int list keys allowed) as a flat ``*.npz`` keyed by leaf path; written
  to a temporary file and renamed, so a crash never leaves a half-written cache entry."""
  flat = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(
      jax.device_get(tree))[0]}
  tmp = path.with_name(path.stem + ".tmp.npz")
  ckpt_io.save(tmp, flat)
  tmp.rename(path)


def load_like(path: pathlib.Path, template: Any) -> Any:
  """A params file read onto `template`'s structure (int list keys kept), by leaf path."""
  flat = ckpt_io.load(path, nested=False)
  return jax.tree_util.tree_map_with_path(lambda p, _: jnp.asarray(flat[path_str(p)]), template)


def cached_init(cache: pathlib.Path, key: str, params: Any) -> tuple[pathlib.Path, str]:
  """``(cache/init-<hash>.npz, hash)`` of ``key``: the warm start of a stage, written once."""
  h = hashlib.sha256(key.encode()).hexdigest()[:12]
  path = cache / f"init-{h}.npz"
  if not path.exists():
    save_params(path, params)
  return path, h


@dataclasses.dataclass
class Stage:
  name: str
  hash: str
  dir: pathlib.Path
  params: Any
  trained: bool


def run_stage(name: str, cfg: config_lib.ExperimentConfig, cache: pathlib.Path,
              parent: str = "", log: Callable[[str], None] = print) -> Stage:
  """Trains `cfg` in `cache/<name>-<hash>` (resuming), or loads its params when cached."""
  h = _stage_hash(cfg, parent)
  d = cache / f"{name}-{h}"
  params_file = d / "params.npz"
  from jaxmtl.train import loop  # pylint: disable=import-outside-toplevel
  if params_file.exists():
    exp = loop.build(cfg)
    log(f"[cached] {name} ({d.name})")
    return Stage(name, h, d, load_like(params_file, exp.abstract.params), False)
  log(f"[train] {name} -> {d}")
  t0 = time.time()
  res = loop.train(cfg, d)
  params = jax.device_get(res["state"].params)
  save_params(params_file, params)
  (d / "stage.json").write_text(json.dumps({"name": name, "hash": h, "parent": parent,
                                            "eval": res["eval"], "seconds": time.time() - t0},
                                           indent=2, sort_keys=True))
  return Stage(name, h, d, params, True)


# ------------------------------------------------------------------------------ model plumbing


@dataclasses.dataclass
class Suite:
  """The tasks' data and one model graph with a head per task."""
  names: list[str]                  # task (head) names, e.g. "suite_mnist"
  datasets: list[str]
  graphdef: Any
  spec_scale: float | None
  train: dict[str, tuple[np.ndarray, np.ndarray]]
  test: dict[str, tuple[np.ndarray, np.ndarray]]
  head_template: dict[str, Any]


def _arrays(source, key: str) -> tuple[np.ndarray, np.ndarray]:
  n = len(source)
  if hasattr(source, "__getitems__"):  # TFDS sources decode a list of records ~2x faster
    rows = [r for i in range(0, n, 4096) for r in source.__getitems__(range(i, min(n, i + 4096)))]
  else:
    rows = [source[i] for i in range(n)]
  return (np.stack([r[key] for r in rows]), np.asarray([r["label"] for r in rows], np.int32))


def load_suite(cfg: config_lib.ExperimentConfig, datasets: Sequence[str]) -> Suite:
  """Reads every task's train/test split into memory and builds the all-heads model graph."""
  from jaxmtl.data.sources import get_source  # pylint: disable=import-outside-toplevel
  from jaxmtl.models import abstract_model  # pylint: disable=import-outside-toplevel
  spec, members = tasks_lib.mixture_spec(datasets, cfg.data.data_dir)
  names = [t.name for t in spec.tasks]
  if any(len(m.tasks) != 1 for m in members):
    raise ValueError(f"every benchmark dataset must have one task; got "
                     f"{ {m.name: [t.name for t in m.tasks] for m in members} }")
  train, test = {}, {}
  for name, m in zip(names, members):
    key = m.input_key
    train[name] = _arrays(get_source(m.name, "train", cfg.data.data_dir), key)
    test[name] = _arrays(get_source(m.name, cfg.data.eval_split, cfg.data.data_dir), key)
  outputs = {t.name: t.num_outputs for t in spec.tasks}
  graphdef, abstract, _, _ = abstract_model(cfg.model, spec.input_shape, outputs, cfg.mup)
  heads = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract[HEADS])
  return Suite(names, list(datasets), graphdef, members[0].input_scale, train, test, heads)


def _scale(suite: Suite, x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * suite.spec_scale if suite.spec_scale is not None else x


def _model(suite: Suite, backbone: Any, heads: Mapping[str, Any]):
  """The all-heads module with `backbone` and the given per-task heads (others zero)."""
  all_heads = {HEADS: {**suite.head_template[HEADS], **heads}}
  return nnx.merge(suite.graphdef, {**backbone, HEADS: all_heads})


def make_logits_fn(suite: Suite, names: Sequence[str]):
  """AdaMerging's logits_fn: one encoder pass over all tasks' inputs, each task's own head."""
  names = list(names)

  def logits_fn(backbone, heads, xs):
    model = _model(suite, backbone, heads)
    sizes = [x.shape[0] for x in xs]
    z = model.encode(_scale(suite, jnp.concatenate(xs)))
    zs = jnp.split(z, np.cumsum(sizes)[:-1])
    return [model.heads.heads[n](zt).astype(jnp.float32) for n, zt in zip(names, zs)]

  return logits_fn


def make_evaluator(suite: Suite, batch: int = 1024):
  """accuracy(backbone, heads) -> {task: test accuracy} (each task with its own head).

  Compiled once for every task and method: every head has the same shape, so each is applied
  in the first task's head slot, and test sets are cut into fixed-size, masked chunks.
  """
  slot = suite.names[0]

  @jax.jit
  def hits(backbone, head, x, y, mask):
    model = _model(suite, backbone, {slot: head})
    logits = model.heads.heads[slot](model.encode(_scale(suite, x)))
    return jnp.sum((jnp.argmax(logits, -1) == y) & mask)

  chunks = {}
  for n in suite.names:
    x, y = suite.test[n]
    pad = (-len(x)) % batch
    xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mask = np.arange(len(xp)) < len(x)
    chunks[n] = [(xp[i:i + batch], yp[i:i + batch], mask[i:i + batch])
                 for i in range(0, len(xp), batch)]

  def accuracy(backbone, heads: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for n in suite.names:
      if n in heads:
        total = sum(hits(backbone, heads[n], *c) for c in chunks[n])
        out[n] = int(total) / len(suite.test[n][1])
    return out

  return accuracy


def fit_probe(suite: Suite, backbone: Any, name: str, steps: int, lr: float) -> dict[str, Any]:
  """A linear head for task `name` on frozen `backbone` features: full-batch Adam on the
  softmax cross-entropy of its train split, from zeros (deterministic)."""
  x, y = suite.train[name]
  encode = jax.jit(lambda b, xb: _model(suite, b, {}).encode(_scale(suite, xb)))
  z = jnp.concatenate([encode(backbone, x[i:i + 4096]) for i in range(0, len(x), 4096)])
  head0 = jax.tree.map(jnp.zeros_like, suite.head_template[HEADS][name])
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

  def loss(head):
    logits = _model(suite, backbone, {name: head}).heads.heads[name](z)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           jnp.asarray(y)).mean()

  @jax.jit
  def fit(head):
    def body(carry, _):
      head, state = carry
      g = jax.grad(loss)(head)
      updates, state = opt.update(g, state, head)
      return (optax.apply_updates(head, updates), state), None
    (head, _), _ = jax.lax.scan(body, (head, opt.init(head)), None, length=steps)
    return head

  return jax.device_get(fit(head0))


# ------------------------------------------------------------------------------ the benchmark


def run(c: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs (or resumes) the benchmark of config `c` (experiment keys + `benchmark`)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base, bc = split_config(c)
  cache = pathlib.Path(bc.cache).expanduser() if bc.cache else workdir / "cache"
  timing: dict[str, float] = {}
  t_start = time.time()
  base_exp = config_lib.experiment_config(base)

  # 1. Pretraining (one backbone for every seed).
  pre_cfg = stage_config(base, {"data.name": bc.pretrain_data, "data.mixture": (),
                                "train.steps": bc.pretrain_steps, "optim.lr": bc.pretrain_lr,
                                "optim.total_steps": bc.pretrain_steps})
  pre = run_stage("pretrain", pre_cfg, cache, log=log)
  backbone0, _ = split_heads(pre.params)
  timing["pretrain"] = time.time() - t_start

  suite = load_suite(base_exp, bc.tasks)
  evaluate = make_evaluator(suite)

  # 2. Linear probes on the frozen pretrained features.
  t0 = time.time()
  probe_key = f"{pre.hash}|probe|{bc.probe_steps}|{bc.probe_lr}"
  probe_file = cache / f"probes-{hashlib.sha256(probe_key.encode()).hexdigest()[:12]}.npz"
  probe_template = {n: suite.head_template[HEADS][n] for n in suite.names}
  if probe_file.exists():
    probes = load_like(probe_file, probe_template)
  else:
    probes = {n: fit_probe(suite, backbone0, n, bc.probe_steps, bc.probe_lr)
              for n in suite.names}
    save_params(probe_file, probes)
  timing["probe"] = time.time() - t0

  methods = list(bc.methods)
  # One logits_fn for every AdaMerging fit: the compiled step is cached per function and
  # options, so variants that differ only in their task vectors (++) and the seeds share it.
  logits_fn = make_logits_fn(suite, suite.names)
  per_seed: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
  coefficients: dict[str, dict[str, Any]] = {}
  diagnostics: dict[str, list[float]] = {}
  for seed in bc.seeds:
    # 3. Fine-tuning, each task from the pretrained backbone (+ its probe head with LP-FT).
    t0 = time.time()
    fts = {}
    for n, dataset in zip(suite.names, suite.datasets):
      init = {**backbone0, HEADS: {HEADS: {n: probes[n]}}} if bc.lpft else pre.params
      init_file, init_hash = cached_init(
          cache, f"{pre.hash}|{probe_file.name if bc.lpft else ''}|{n}", init)
      ft_cfg = stage_config(base, {
          "seed": seed, "data.name": dataset, "data.mixture": (),
          "data.batch_size": bc.finetune_batch_size, "train.steps": bc.finetune_steps,
          "optim.lr": bc.finetune_lr, "optim.total_steps": bc.finetune_steps,
          "train.init_from": str(init_file.resolve())})
      fts[n] = run_stage(f"finetune_{n}_s{seed}", ft_cfg, cache, parent=init_hash, log=log)
    timing[f"finetune_s{seed}"] = time.time() - t0
    ft_backbones = {n: split_heads(s.params)[0] for n, s in fts.items()}
    ft_heads = {n: split_heads(s.params)[1][HEADS][n] for n, s in fts.items()}

    # 4. Traditional MTL (one model, all tasks jointly), from the pretrained backbone.
    if "mtl" in methods:
      t0 = time.time()
      mtl_init = {**backbone0, HEADS: {HEADS: dict(probes)}} if bc.lpft else pre.params
      mtl_file, mtl_hash = cached_init(
          cache, f"{pre.hash}|{probe_file.name if bc.lpft else ''}|mtl", mtl_init)
      mtl_cfg = stage_config(base, {
          "seed": seed, "data.mixture": tuple(bc.tasks), "train.steps": bc.mtl_steps,
          "optim.lr": bc.mtl_lr, "optim.total_steps": bc.mtl_steps,
          "train.init_from": str(mtl_file.resolve())})
      mtl = run_stage(f"mtl_s{seed}", mtl_cfg, cache, parent=mtl_hash, log=log)
      mtl_backbone, mtl_heads = split_heads(mtl.params)
      per_seed["mtl"][seed] = evaluate(mtl_backbone, mtl_heads[HEADS])
      timing[f"mtl_s{seed}"] = time.time() - t0

    # 5. Evaluation and merging.
    t0 = time.time()
    if "pretrained" in methods:
      per_seed["pretrained"][seed] = evaluate(backbone0, probes)
    if "individual" in methods:
      per_seed["individual"][seed] = {
          n: evaluate(ft_backbones[n], {n: ft_heads[n]})[n] for n in suite.names}
    finetuned = [ft_backbones[n] for n in suite.names]
    for m in methods:
      if m in DATA_FREE:
        fn, defaults = DATA_FREE[m]
        opts = {**defaults, **dict(dict(bc.method_options).get(m, {}))}
        if m == "dare":
          opts["key"] = jax.random.key(seed)
        merged = fn(backbone0, finetuned, **opts)
        per_seed[m][seed] = evaluate(merged, ft_heads)
        log(f"  seed {seed} {m}: avg {np.mean(list(per_seed[m][seed].values())):.4f}")
    for m in methods:
      if m not in ADAMERGING:
        continue
      opts = dict(ADAMERGING[m])
      labels = ([suite.test[n][1] for n in suite.names]
                if opts.get("objective") == "supervised" else None)
      res = M.adamerging_fit(
          backbone0, finetuned, logits_fn=logits_fn,
          inputs=[suite.test[n][0] for n in suite.names], labels=labels,
          heads={n: ft_heads[n] for n in suite.names}, key=jax.random.key(seed),
          steps=bc.adamerging_steps, lr=bc.adamerging_lr,
          batch_size=bc.adamerging_batch_size, clamp=bc.adamerging_clamp,
          init=bc.adamerging_init, entropy_eps=bc.adamerging_entropy_eps,
          progress=progress, **opts)
      per_seed[m][seed] = evaluate(res.merged, ft_heads)
      entry = coefficients.setdefault(m, {"groups": res.group_names, "per_seed": {},
                                          "loss_first": {}, "loss_last": {}})
      entry["per_seed"][seed] = res.coefficients.tolist()
      entry["loss_first"][seed] = float(res.losses[0]) if len(res.losses) else math.nan
      entry["loss_last"][seed] = float(res.losses[-10:].mean()) if len(res.losses) else math.nan
      log(f"  seed {seed} {m}: avg {np.mean(list(per_seed[m][seed].values())):.4f} "
          f"(objective {entry['loss_first'][seed]:.4f} -> {entry['loss_last'][seed]:.4f})")
    if seed == bc.seeds[0] and bc.diagnostic_lambdas:
      diagnostics = lambda_sweep(suite, evaluate, backbone0, finetuned, ft_heads,
                                 bc.diagnostic_lambdas)
    timing[f"merge_s{seed}"] = time.time() - t0

  timing["total"] = time.time() - t_start
  results = summarize(suite.names, methods, per_seed, coefficients, bc, timing)
  results["lambda_sweep"] = diagnostics
  write_outputs(workdir, results)
  plot_suite(suite, workdir / "suite.png")
  return results


def lambda_sweep(suite: Suite, evaluate, backbone0, finetuned, heads, lambdas
                 ) -> dict[str, list[float]]:
  """Task arithmetic at each scaling: average test accuracy, the entropy objective of
  AdaMerging (batch-mean entropy summed over tasks, on up to 1000 test inputs per task) and
  the mean feature norm ||encode(x)|| -- whether lower entropy means higher accuracy here."""
  import importlib  # pylint: disable=import-outside-toplevel
  ada = importlib.import_module("jaxmtl.merging.adamerging")
  logits_fn = jax.jit(make_logits_fn(suite, suite.names))
  encode = jax.jit(lambda b, x: _model(suite, b, {}).encode(_scale(suite, x)))
  xs = tuple(jnp.asarray(suite.test[n][0][:1000]) for n in suite.names)
  out = {"lambda": [], "accuracy": [], "entropy": [], "feature_norm": []}
  for lam in lambdas:
    merged = M.task_arithmetic(backbone0, finetuned, scaling=float(lam))
    acc = evaluate(merged, heads)
    entropy = sum(float(jnp.mean(ada.softmax_entropy(lg)))
                  for lg in logits_fn(merged, heads, xs))
    norm = float(np.mean([jnp.mean(jnp.linalg.norm(encode(merged, x), axis=-1)) for x in xs]))
    for k, v in (("lambda", float(lam)), ("accuracy", float(np.mean(list(acc.values())))),
                 ("entropy", entropy), ("feature_norm", norm)):
      out[k].append(v)
  return out


# ------------------------------------------------------------------------------ outputs


def summarize(names: Sequence[str], methods: Sequence[str],
              per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
              coefficients: Mapping[str, Any], bc: BenchmarkConfig,
              timing: Mapping[str, float]) -> dict[str, Any]:
  """Mean ± std (over seeds, ddof 0) per task and of the per-seed task averages."""
  table = {}
  for m in methods:
    runs = per_seed[m]
    if not runs:
      continue
    acc = np.asarray([[runs[s][n] for n in names] for s in sorted(runs)], np.float64)
    avg = acc.mean(axis=1)
    table[m] = {"mean": dict(zip(names, acc.mean(0).tolist())),
                "std": dict(zip(names, acc.std(0).tolist())),
                "avg_mean": float(avg.mean()), "avg_std": float(avg.std()),
                "per_seed": {str(s): dict(runs[s]) for s in sorted(runs)}}
  for m, entry in coefficients.items():
    entry["mean"] = np.mean([entry["per_seed"][s] for s in sorted(entry["per_seed"])],
                            axis=0).tolist()
  checks = {}
  if "individual" in table and bc.check_acceptance:
    ind = table["individual"]["avg_mean"]
    for m, need in (("pretrained", 0.15), ("weight_averaging", 0.10)):
      if m in table:
        gap = ind - table[m]["avg_mean"]
        checks[m] = {"gap": gap, "required": need, "pass": bool(gap >= need)}
  return {"tasks": list(names), "seeds": list(bc.seeds), "methods": table,
          "coefficients": dict(coefficients), "acceptance": checks,
          "benchmark": dataclasses.asdict(bc), "timing_s": dict(timing)}


def markdown(results: Mapping[str, Any]) -> str:
  names = results["tasks"]
  short = [n.removeprefix("suite_") for n in names]
  seeds = len(results["seeds"])
  lines = [f"Test accuracy (%), mean ± std over {seeds} seed{'s' if seeds > 1 else ''}.", "",
           "| method | " + " | ".join(short) + " | avg |",
           "|---|" + "---:|" * (len(names) + 1)]
  for m, r in results["methods"].items():
    cells = [f"{100 * r['mean'][n]:.1f} ± {100 * r['std'][n]:.1f}" for n in names]
    lines.append(f"| {DISPLAY.get(m, m)} | " + " | ".join(cells)
                 + f" | **{100 * r['avg_mean']:.1f} ± {100 * r['avg_std']:.1f}** |")
  if results["acceptance"]:
    lines.append("")
    for m, chk in results["acceptance"].items():
      lines.append(f"- individual − {DISPLAY.get(m, m)}: {100 * chk['gap']:.1f} points "
                   f"(required ≥ {100 * chk['required']:.0f}): "
                   f"{'pass' if chk['pass'] else 'FAIL'}")
  return "\n".join(lines)


def write_outputs(workdir: pathlib.Path, results: Mapping[str, Any]) -> None:
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  (workdir / "results.md").write_text(markdown(results) + "\n")
  plot_bars(results, workdir / "bars.png")
  if any(len(e["groups"]) > 1 for e in results["coefficients"].values()):
    plot_lambdas(results, workdir / "lambdas.png")
  if results.get("lambda_sweep"):
    plot_lambda_sweep(results["lambda_sweep"], workdir / "entropy_vs_lambda.png")


def plot_bars(results: Mapping[str, Any], path: pathlib.Path) -> None:
  """Average accuracy per method (± std over seeds), baselines shaded apart."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  table = results["methods"]
  ms = list(table)
  y = np.arange(len(ms))[::-1]
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(ms) + 1.2))
  colors = ["#888888" if m in BASELINES else "#4c72b0" if m in DATA_FREE else "#dd8452"
            for m in ms]
  ax.barh(y, [100 * table[m]["avg_mean"] for m in ms],
          xerr=[100 * table[m]["avg_std"] for m in ms], color=colors, capsize=2)
  for yi, m in zip(y, ms):
    ax.text(100 * table[m]["avg_mean"] + 0.5, yi, f"{100 * table[m]['avg_mean']:.1f}",
            va="center", fontsize=7)
  ax.set_yticks(y, [DISPLAY.get(m, m) for m in ms], fontsize=8)
  ax.set_xlabel(f"average test accuracy over {len(results['tasks'])} tasks (%)")
  ax.set_title("merging benchmark (grey: baselines, blue: data-free, orange: AdaMerging)",
               fontsize=8)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_lambdas(results: Mapping[str, Any], path: pathlib.Path) -> None:
  """Learned coefficients lambda[t, g] over layers g (mean over seeds), one line per task."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  entries = {m: e for m, e in results["coefficients"].items() if len(e["groups"]) > 1}
  fig, axes = plt.subplots(1, len(entries), figsize=(4.5 * len(entries), 3.6), squeeze=False)
  names = [n.removeprefix("suite_") for n in results["tasks"]]
  for ax, (m, e) in zip(axes[0], entries.items()):
    lam = np.asarray(e["mean"])
    for t, n in enumerate(names):
      ax.plot(np.arange(lam.shape[1]), lam[t], marker=".", label=n)
    ax.set_xticks(np.arange(lam.shape[1]), e["groups"], rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("λ (mean over seeds)")
    ax.set_title(DISPLAY.get(m, m), fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_lambda_sweep(sweep: Mapping[str, Sequence[float]], path: pathlib.Path) -> None:
  """Accuracy, AdaMerging's entropy objective and feature norm vs task-arithmetic lambda."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
  for ax, key, label in zip(axes, ("accuracy", "entropy", "feature_norm"),
                            ("average test accuracy", "entropy (sum over tasks)",
                             "mean ||encode(x)||")):
    ax.plot(sweep["lambda"], np.asarray(sweep[key]) * (100 if key == "accuracy" else 1),
            marker="o")
    ax.set_xlabel("task arithmetic λ (all tasks)")
    ax.set_ylabel(label + (" (%)" if key == "accuracy" else ""))
    ax.grid(alpha=0.3)
  fig.suptitle("merged model θ0 + λ Σ τ_t, first seed", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_suite(suite: Suite, path: pathlib.Path, per_task: int = 8) -> None:
  """The first `per_task` test images of every task, with their labels."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(len(suite.names), per_task, squeeze=False,
                           figsize=(per_task * 0.9, len(suite.names) * 1.0))
  for row, n in zip(axes, suite.names):
    x, y = suite.test[n]
    for j, ax in enumerate(row):
      ax.imshow(x[j].squeeze(-1), cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(str(int(y[j])), fontsize=7, pad=1)
    row[0].set_ylabel(n.removeprefix("suite_"), fontsize=7, rotation=0, ha="right",
                      va="center")
  fig.tight_layout(pad=0.2)
  fig.savefig(path, dpi=100)
  plt.close(fig)
