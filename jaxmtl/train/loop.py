"""The visible training loop: build, restore or init, step, log, evaluate, checkpoint.

Read this file top to bottom to see what a run does. Metrics of step t are
fetched after step t+1 has been dispatched (the device never waits for the
host); a non-finite loss stops the run naming the step and the task; SIGTERM
(preemption) saves a checkpoint and raises `Preempted`.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxmtl import config as config_lib
from jaxmtl import mesh as mesh_lib
from jaxmtl import observability
from jaxmtl import tasks as tasks_lib
from jaxmtl.checkpoint import Checkpointer
from jaxmtl.data import pipeline
from jaxmtl.metric_writers import MetricWriter, Throughput, peak_flops_per_device
from jaxmtl.models import abstract_model, make_model
from jaxmtl.optim import make_optimizer
from jaxmtl.train import report
from jaxmtl.train import state as state_lib
from jaxmtl.train import warm_start
from jaxmtl.train.evaluate import make_evaluator
from jaxmtl.train.combine import make_mtl
from jaxmtl.train.step import make_eval_step, make_features_fns, make_loss_fn, make_train_step

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; launchers requeue on it.


class Preempted(Exception):
  """Raised after SIGTERM: a checkpoint of `step` was saved; restart to resume."""

  def __init__(self, step: int):
    super().__init__(f"preempted: checkpoint saved at step {step}; run again to resume")
    self.step = step


class NonFiniteLoss(FloatingPointError):
  """A task's loss became NaN or inf."""


@dataclasses.dataclass
class Experiment:
  """Everything built from the config before the first step (no arrays yet)."""
  cfg: config_lib.ExperimentConfig
  mesh: Any
  spec: tasks_lib.DataSpec
  data: pipeline.RunData
  graphdef: Any
  optimizer: Any
  mtl: Any
  abstract: state_lib.TrainState
  shardings: state_lib.TrainState
  model_fn: Any
  param_axes: Any
  param_rules: Any


def build(cfg: config_lib.ExperimentConfig, devices=None) -> Experiment:
  """Mesh, data spec, model, optimizer and the train state's abstract shape and shardings."""
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  rules = mesh_lib.rules_for(cfg.mesh)
  data = pipeline.run_data(cfg.data, cfg.seed)
  spec = data.spec
  outputs = {t.name: t.num_outputs for t in spec.tasks}
  model_fn = lambda rngs: make_model(cfg.model, spec.input_shape, outputs, cfg.mup, rngs)
  graphdef, _, axes, param_rules = abstract_model(cfg.model, spec.input_shape, outputs, cfg.mup)
  optimizer = make_optimizer(cfg.optim, param_rules)
  steps_per_epoch = max(data.train_size // cfg.data.batch_size, 1)
  mtl = make_mtl(cfg.mtl, len(spec.tasks), make_loss_fn(graphdef, spec),
                 make_features_fns(graphdef, spec), steps_per_epoch)
  abstract = state_lib.abstract_state(model_fn, optimizer, mtl.init, cfg.seed)
  param_sh = mesh_lib.tree_shardings(axes, abstract.params, rules, mesh)
  shardings = state_lib.state_shardings(abstract, param_sh, optimizer, mesh)
  if cfg.mesh.strategy != "dp":
    mesh_lib.check_sufficiently_sharded(abstract.params, param_sh, mesh, cfg.mesh)
  return Experiment(cfg, mesh, spec, data, graphdef, optimizer, mtl, abstract, shardings,
                    model_fn, axes, param_rules)


def init_state(exp: Experiment) -> state_lib.TrainState:
  init = state_lib.make_init(exp.model_fn, exp.optimizer, exp.mtl.init, exp.cfg.seed)
  with jax.set_mesh(exp.mesh):
    return jax.jit(lambda: init(exp.shardings.params), out_shardings=exp.shardings)()


def compile_train_step(exp: Experiment, batch_spec: dict[str, jax.ShapeDtypeStruct]):
  """The jitted step with explicit shardings; the state is donated."""
  tc = exp.cfg.train
  step = make_train_step(exp.graphdef, exp.spec, exp.optimizer, exp.mtl,
                         stats_every=tc.log_every, total_steps=tc.steps,
                         update_rms=tc.log_update_rms)
  batch_sh = {k: v.sharding for k, v in batch_spec.items()}
  return jax.jit(step, in_shardings=(exp.shardings, batch_sh),
                 out_shardings=(exp.shardings, mesh_lib.replicated(exp.mesh)), donate_argnums=0)


def _check_finite(step: int, metrics: dict[str, float], spec: tasks_lib.DataSpec) -> None:
  bad = [t.name for t in spec.tasks if not math.isfinite(metrics[f"loss/{t.name}"])]
  if bad or not math.isfinite(metrics["loss"]):
    raise NonFiniteLoss(
        f"non-finite loss at step {step} in task(s) {bad or ['(combined)']}: "
        + ", ".join(f"{t}={metrics[f'loss/{t}']}" for t in bad or [t.name for t in spec.tasks])
        + ". The last checkpoint before it is kept; lower the learning rate or check the data.")


def train(cfg: config_lib.ExperimentConfig, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs (or resumes) the experiment in `workdir`. Returns the final results."""
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_lib.to_json(cfg))
  prints = {"config": observability.config_fingerprint(cfg),
            "code": observability.code_fingerprint()}
  observability.check_processes_agree(prints)  # same config and code on every host
  plog = observability.ProcessLog(workdir, every=cfg.train.log_every, fingerprints=prints)
  exp = build(cfg)
  tc = cfg.train
  train_iter = pipeline.train_iterator(exp.data, cfg.data.batch_size, exp.mesh)
  ckpt = Checkpointer(workdir / "checkpoints", save_every=tc.checkpoint_every,
                      keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
  restored = ckpt.restore_latest(state_lib.with_shardings(exp.abstract, exp.shardings))
  if restored is not None:  # newest readable checkpoint; corrupt ones are moved aside
    _, state, data_state = restored
    train_iter.set_state(data_state)
  else:
    state = init_state(exp)
    if tc.init_from:  # fine-tuning: matching parameters from another run or a params file
      state = _warm_start(state, exp, workdir if is_main else None)
  step_fn = compile_train_step(exp, train_iter.element_spec)
  evaluate = make_evaluator(make_eval_step(exp.graphdef, exp.spec),
                            exp.spec, exp.data.eval, exp.mesh, cfg.data.eval_batch_size, exp.shardings.params)
  writer = MetricWriter(workdir)
  tokens = cfg.data.batch_size * exp.spec.input_shape[0] if exp.spec.tasks[0].kind == "lm" else 0
  flops = step_flops(exp, train_iter.element_spec)
  meter = Throughput(cfg.data.batch_size, tokens, flops, exp.mesh.size, peak_flops_per_device())
  names = [t.name for t in exp.spec.tasks]

  preempted = {"flag": False}
  old_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True)) \
      if _is_main_thread() else None
  start = int(jax.device_get(state.step))
  bar = tqdm(total=tc.steps, initial=start, disable=not (tc.progress and is_main),
             desc="train", unit="step", dynamic_ncols=True)
  last_train, last_eval, pending = {}, {}, None
  try:
    for step in range(start, tc.steps):
      state, metrics = step_fn(state, next(train_iter))
      if pending is not None:  # Fetch step t-1's metrics now that step t is dispatched.
        last_train = _handle(pending, exp, writer, meter, bar, tc)
      pending = (step + 1, metrics)
      done = step + 1
      plog.heartbeat(done)  # logs/process_{i}.log: step time, slowest process
      if done % tc.eval_every == 0 or done == tc.steps:
        last_train = _handle(pending, exp, writer, meter, bar, tc)
        pending = None
        last_eval = evaluate(state.params)
        writer.write(done, last_eval, prefix="eval/")
        bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
      if observability.any_process(preempted["flag"]):  # all processes save together
        if pending is not None:
          last_train = _handle(pending, exp, writer, meter, bar, tc)
          pending = None
        ckpt.save(done, state, train_iter.get_state(), force=True)
        ckpt.wait()
        plog.write(f"preempted: checkpoint saved at step {done}")
        raise Preempted(done)
      ckpt.save(done, state, train_iter.get_state(), force=done == tc.steps)
    if pending is not None:
      last_train = _handle(pending, exp, writer, meter, bar, tc)
  finally:
    bar.close()
    plog.close()
    ckpt.close()
    writer.close()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  if not last_eval:
    last_eval = evaluate(state.params)
  results = {"eval": last_eval, "train": last_train, "step": tc.steps}
  if is_main:
    table = report.write_results(workdir, names, last_eval, last_train)
    if tc.plot:
      report.plot_curves(workdir, names)
    results["table"] = table
  results["state"] = state
  return results


def _warm_start(state: state_lib.TrainState, exp: Experiment,
                workdir: pathlib.Path | None) -> state_lib.TrainState:
  """Replaces the fresh params that `train.init_from` provides; writes init_from.json."""
  tc = exp.cfg.train
  target = state_lib.with_shardings(exp.abstract, exp.shardings).params
  values, report = warm_start.load_matching(tc.init_from, target, tc.init_exclude)
  if workdir is not None:
    (workdir / "init_from.json").write_text(report.to_json())
  return state.replace(params=warm_start.apply(state.params, values))


def _handle(pending, exp, writer, meter, bar, tc) -> dict[str, float]:
  step, metrics = pending
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if tc.stop_on_nan:
    _check_finite(step, metrics, exp.spec)
  if step % tc.log_every == 0 or step == tc.steps:
    speed = meter.update(step)
    writer.write(step, {**metrics, **speed}, prefix="train/")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                    **({"ex/s": f"{speed['examples_per_sec']:.0f}"} if speed else {}))
  bar.update(step - bar.n)
  return metrics


def step_flops(exp: Experiment, batch_spec) -> float:
  """Analytic FLOPs of one train step: 6 x (matmul parameters) x (tokens per step).

  Tokens are positions the weights are applied at: examples (MLP), patches
  (ViT) or sequence positions (LM). For the LM, causal attention adds
  6 x layers x seq x width per token (QK^T and AV, halved for causality,
  forward + backward), as in maxtext / PaLM's MFU.
  """
  cfg, spec = exp.cfg.model, exp.spec
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(exp.abstract.params))
  if cfg.name == "transformer":
    n -= cfg.vocab_size * cfg.width  # the embedding lookup is not a matmul
  batch = exp.cfg.data.batch_size
  if cfg.name == "mlp":
    return 6.0 * n * batch
  if cfg.name == "vit":
    patches = math.prod(spec.input_shape[:2]) // cfg.patch_size ** 2
    return 6.0 * n * batch * patches
  seq = spec.input_shape[0]
  attn = 6.0 * cfg.depth * seq * cfg.width  # 12 L s d, halved by the causal mask
  return (6.0 * n + attn) * batch * seq


def _is_main_thread() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()
