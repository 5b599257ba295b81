"""μP verification tools: coordinate checks and μTransfer sweep analysis.

Coordinate check (Tensor Programs V, Yang et al. arXiv 2203.03466, Sec. 4 / App. D.1;
microsoft/mup 1.0.0 ``mup/coord_check.py``, ``get_coord_data`` + ``plot_coord_data``): train
models of several widths for a few steps on one fixed batch and record, per layer and step,
the mean absolute activation ``mean |h_t|`` (the ``nnx.Intermediate`` values the models sow
under ``ModelConfig.sow_activations=True``, exactly microsoft/mup's ``x.abs().mean()``). Under
a correct parametrization these sizes do not depend on width; the log-log slope against width
measures a blow-up (SP with Adam: ``> 0``). Vanishing updates (a too small hidden lr) barely
move ``mean |h_t|``, so the check also records ``mean |h_t - h_0|`` (the change since init,
TP-V's "every layer's features change by Θ(1)" desideratum), from the same forward pass
re-run layer by layer through the model's public submodules (MLP and TransformerLM).

Sweep analysis (TP-V Fig. 1 / Sec. 5): optimal learning rate per width from a loss table, with
a parabola fit in log2(lr) around the grid minimum.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmtl import config as config_lib
from jaxmtl import mup
from jaxmtl import tasks as tasks_lib
from jaxmtl.models import abstract_model, make_model
from jaxmtl.optim import make_optimizer
from jaxmtl.train.step import make_loss_fn

RulesFn = Callable[[Any, int], Any]
MEASURES = ("size", "change", "update")
# Families whose sown intermediates are read directly. TransformerLM sows under the name
# "embed", which clashes with its `embed` submodule (flax raises), so its sizes are computed
# from the layer outputs with the same formula, mean |h|.
SOW_FAMILIES = ("mlp",)


def fixed_batch(data_name: str, batch_size: int, data_dir: str | None = None,
                start: int = 0) -> dict[str, np.ndarray]:
  """Examples ``[start, start + batch_size)`` of the train split as numpy arrays (no mask)."""
  from jaxmtl.data.sources import get_source  # Local import: data pulls in TFDS.
  source = get_source(data_name, "train", data_dir)
  if not 0 <= start and start + batch_size <= len(source):
    raise ValueError(f"batch [{start}, {start + batch_size}) outside the train split of "
                     f"{data_name!r} (size {len(source)})")
  rows = [source[i] for i in range(start, start + batch_size)]
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def scale_hidden_lr(rules: Any, factor: float) -> Any:
  """Rules with the lr multiplier of every ``"hidden"`` parameter multiplied by ``factor``
  (weight decay scale kept). ``factor = base_width / width`` gives the broken "hidden lr ÷ m²"
  parametrization that a coordinate check must reject."""
  def f(r: mup.ParamRule) -> mup.ParamRule:
    return dataclasses.replace(r, lr_scale=r.lr_scale * factor) if r.role == "hidden" else r
  return jax.tree.map(f, rules, is_leaf=mup.is_rule)


def broken_rules(rules: Any, width: int, base_width: int) -> Any:
  """Hidden lr ÷ m² instead of ÷ m (m = width / base_width): a deliberately wrong μP."""
  return scale_hidden_lr(rules, base_width / width)


def _layer_outputs(model: nnx.Module, x: jax.Array) -> dict[str, jax.Array]:
  """Every layer's output, named like the model's sown intermediates (MLP, TransformerLM)."""
  out = {}
  if hasattr(model, "layers"):  # MLP
    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(model.layers):
      h = model.act(layer(h))
      out[f"layer_{i}"] = h
  elif hasattr(model, "blocks") and hasattr(model, "embed"):  # TransformerLM
    h = model.embed(x.astype(jnp.int32))
    out["embed"] = h
    for i, block in enumerate(model.blocks):
      h = block(h)
      out[f"block_{i}"] = h
    h = model.final_norm(h)
  else:
    raise ValueError(f"coordinate check supports the mlp and transformer families, got "
                     f"{type(model).__name__}")
  for k, v in model.heads(h).items():
    out[f"head_{k}"] = v
  return {k: v.astype(jnp.float32) for k, v in out.items()}


def _own_updates(model: nnx.Module, model0: nnx.Module, x: jax.Array,
                 outs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """MLP only: ``mean |mult · x_in,t (W_t - W_0)|`` per layer, the part of a layer's output
  change due to its own weight update (TP-V Sec. 2 / App. J: Θ(1) in μP, Θ(m) for SP + Adam,
  Θ(1/m) when the lr is too small by 1/m). {} for other families."""
  if not hasattr(model, "layers"):
    return {}
  h = x.reshape(x.shape[0], -1).astype(jnp.float32)
  out = {}
  def own(layer, layer0, inp):
    dk = layer.kernel[...] - layer0.kernel[...]
    return jnp.abs(layer.multiplier * (inp @ dk)).mean()
  for i, (layer, layer0) in enumerate(zip(model.layers, model0.layers)):
    out[f"layer_{i}"] = own(layer, layer0, h)
    h = outs[f"layer_{i}"]
  for k in model.heads.heads:
    out[f"head_{k}"] = own(model.heads.heads[k], model0.heads.heads[k], h)
  return out


def _sown(model: nnx.Module) -> dict[str, jax.Array]:
  """The model's sown ``nnx.Intermediate`` scalars, ``{"a/b": value}`` (last value sown)."""
  out = {}
  def visit(prefix: tuple, node: Mapping) -> None:
    for k, v in node.items():
      if isinstance(v, Mapping):
        visit(prefix + (str(k),), v)
      else:
        out["/".join(prefix + (str(k),))] = v[-1] if isinstance(v, tuple) else v
  visit((), nnx.to_pure_dict(nnx.state(model, nnx.Intermediate)))
  return out


def coord_data(cfg: config_lib.ExperimentConfig, widths: Sequence[int], steps: int,
               batch: Mapping[str, np.ndarray], rules_fn: RulesFn | None = None
               ) -> dict[str, Any]:
  """Records activation sizes for each width and step t = 0..steps-1 (t updates applied).

  Args:
    cfg: the experiment (model family, parametrization, optimizer, data name); its
      ``model.width`` is replaced by each width and ``sow_activations`` is switched on.
    batch: one fixed raw batch (as the dataset yields it), used at every step.
    rules_fn: optional ``(rules, width) -> rules`` (e.g. a deliberately broken μP).

  Returns:
    ``{"widths": [W], "steps": T, "layers": [names], "size": {layer: [W][T]},
    "change": {layer: [W][T]}, "loss": [W][T]}``: ``size`` = mean |h_t| (the model's sown
    values), ``change`` = mean |h_t - h_0|.
  """
  if steps < 1 or not widths:
    raise ValueError(f"need steps >= 1 and at least one width, got steps={steps!r}, "
                     f"widths={list(widths)!r}")
  spec = tasks_lib.data_spec(cfg.data.name, cfg.data.data_dir, cfg.data.tasks)
  outputs = {t.name: t.num_outputs for t in spec.tasks}
  sizes, changes, updates, losses = {}, {}, {}, []
  for width in widths:
    mcfg = dataclasses.replace(cfg.model, width=int(width),
                               sow_activations=cfg.model.name in SOW_FAMILIES)
    graphdef, _, _, rules = abstract_model(mcfg, spec.input_shape, outputs, cfg.mup)
    if rules_fn is not None:
      rules = rules_fn(rules, int(width))
    tx = make_optimizer(cfg.optim, rules)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make_model(
        mcfg, spec.input_shape, outputs, cfg.mup, nnx.Rngs(params=key)), nnx.Param)))()
    loss_fn = make_loss_fn(graphdef, spec)
    x, _ = tasks_lib.prepare_batch(spec, batch)

    def step_fn(params, opt_state, params0):
      outs = _layer_outputs(nnx.merge(graphdef, params), x)
      sown = {k: jnp.abs(v).mean() for k, v in outs.items()}
      if mcfg.name in SOW_FAMILIES:
        model = nnx.merge(graphdef, params)
        model(x)
        sown = _sown(model)
      own = _own_updates(nnx.merge(graphdef, params), nnx.merge(graphdef, params0), x, outs)
      loss, grads = jax.value_and_grad(lambda p: jnp.sum(loss_fn(p, batch)[0]))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, sown, outs, own

    step_fn = jax.jit(step_fn)
    opt_state = tx.init(params)
    h0, row_loss, params0 = None, [], params
    for t in range(steps):
      params, opt_state, loss, sown, outs, own = step_fn(params, opt_state, params0)
      for name, v in own.items():
        updates.setdefault(name, []).append(float(v))
      if h0 is None:
        h0 = outs
      for name, v in sown.items():
        sizes.setdefault(name, []).append(float(v))
      for name, v in outs.items():
        changes.setdefault(name, []).append(float(jnp.abs(v - h0[name]).mean()))
      row_loss.append(float(loss))
    losses.append(row_loss)
  n = len(widths)
  def grid(d):
    return {k: [v[i * steps:(i + 1) * steps] for i in range(n)] for k, v in d.items()}
  return {"widths": [int(w) for w in widths], "steps": steps, "layers": sorted(sizes),
          "size": grid(sizes), "change": grid(changes), "update": grid(updates), "loss": losses}


def fit_slopes(data: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
  """Least-squares slope of log(value) vs log(width), ``{measure: {layer: [T]}}``.

  Zeros (e.g. ``change`` at t = 0) give slope 0: a value that is 0 at every width does not
  depend on width."""
  logw = np.log(np.asarray(data["widths"], np.float64))
  out = {}
  for measure in MEASURES:
    out[measure] = {}
    for layer, grid in (data.get(measure) or {}).items():
      a = np.asarray(grid, np.float64)  # [W, T]
      row = []
      for t in range(a.shape[1]):
        v = a[:, t]
        if not np.all(np.isfinite(v)):
          row.append(float("inf"))
        elif np.all(v <= 0):
          row.append(0.0)
        else:
          row.append(float(np.polyfit(logw, np.log(np.maximum(v, 1e-30)), 1)[0]))
      out[measure][layer] = row
  return out


def coord_verdict(data: Mapping[str, Any], tol: float = 0.1, from_step: int = 2,
                  blowup: float = 0.3) -> dict[str, Any]:
  """Pass/fail of a coordinate check.

  Passes when, at every step ``t >= from_step`` and for every layer, ``|slope| < tol`` —
  except that a readout's ``size``/``change`` may shrink with width (slope ``< tol``): μP's
  logits at init are Θ(m^-1/2) (TP-V Table 3 readout init; microsoft/mup's coord-check plots
  show the same), so only growth there is a failure. ``blowup`` is True when some slope at
  ``t >= 1`` exceeds ``blowup`` (what SP with Adam shows; the positive control).
  """
  if not 0 < tol < blowup:
    raise ValueError(f"need 0 < tol < blowup, got tol={tol!r}, blowup={blowup!r}")
  slopes = fit_slopes(data)
  failures, top = [], -math.inf
  for measure, layers in slopes.items():
    for layer, row in layers.items():
      readout = layer.startswith("head_") and measure != "update"
      for t, s in enumerate(row):
        if t >= 1:
          top = max(top, s)
        if t >= from_step and (s >= tol if readout else abs(s) >= tol):
          failures.append(f"{measure}/{layer}@t={t}: slope {s:+.3f}")
  return {"passed": not failures, "failures": failures, "blowup": top > blowup,
          "max_slope": float(top), "slopes": slopes}


def plot_coord(runs: Mapping[str, Mapping[str, Any]], path: str | pathlib.Path,
               measure: str = "size") -> None:
  """microsoft/mup-style grid: one row per run (e.g. SP, μP), one panel per step,
  one line per layer, x = width (log2), y = ``measure`` (log)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if measure not in MEASURES:
    raise ValueError(f"invalid measure {measure!r}; valid choices: {', '.join(MEASURES)}")
  steps = max(d["steps"] for d in runs.values())
  fig, axes = plt.subplots(len(runs), steps, figsize=(2.2 * steps, 2.0 * len(runs)),
                           squeeze=False, sharex=True)
  for r, (name, d) in enumerate(runs.items()):
    for t in range(d["steps"]):
      ax = axes[r][t]
      for layer, grid in sorted((d.get(measure) or {}).items()):
        ax.plot(d["widths"], np.asarray(grid)[:, t], marker=".", label=layer)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_title(f"{name} t={t}", fontsize=8)
      ax.tick_params(labelsize=6)
  axes[0][-1].legend(fontsize=5, loc="best")
  fig.supxlabel("width", fontsize=8)
  fig.supylabel(f"mean |h|" if measure == "size" else f"{measure}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def save_json(obj: Any, path: str | pathlib.Path) -> None:
  pathlib.Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------
# μTransfer sweep analysis (TP-V Fig. 1, Sec. 5).
# ----------------------------------------------------------------------------------------
def optimal_lr(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, Any]:
  """Optimum of a loss-vs-lr curve on a log2 grid.

  Non-finite losses (diverged runs) count as +inf. ``grid``: the grid lr with the lowest
  loss; ``interp``: vertex of the parabola through the minimum and its two neighbours in
  log2(lr) (clipped to them; the grid lr when the minimum is at an edge or the fit is not
  convex); ``edge``: the minimum is at the end of the grid (widen the grid).
  """
  x = np.log2(np.asarray(lrs, np.float64))
  y = np.asarray(losses, np.float64)
  if x.shape != y.shape or x.size == 0:
    raise ValueError(f"lrs and losses must be non-empty and of equal length, got "
                     f"{len(lrs)} and {len(losses)}")
  if np.any(np.diff(x) <= 0):
    raise ValueError(f"lrs must be strictly increasing, got {list(lrs)!r}")
  y = np.where(np.isfinite(y), y, np.inf)
  if not np.any(np.isfinite(y)):
    return {"grid": float("nan"), "interp": float("nan"), "loss": float("inf"), "edge": True}
  i = int(np.argmin(y))
  edge = i in (0, len(y) - 1)
  best = x[i]
  if not edge and np.all(np.isfinite(y[i - 1:i + 2])):
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    if a > 0:
      best = float(np.clip(-b / (2 * a), x[i - 1], x[i + 1]))
  return {"grid": float(2.0 ** x[i]), "interp": float(2.0 ** best), "loss": float(y[i]),
          "edge": bool(edge)}


def transfer_summary(lrs: Sequence[float], widths: Sequence[int],
                     losses: Mapping[int, Sequence[float]], base_width: int | None = None
                     ) -> dict[str, Any]:
  """Optimal lr per width and how far it moves.

  ``shift_grid`` / ``shift_interp``: ``max/min`` of the grid / interpolated optima over the
  widths (1 = no move; one 2× grid step = 2). ``regret``: per width, the loss at the lr that is
  optimal for ``base_width`` (default: the first width) minus the loss at the width's own
  optimum (what transferring the base lr costs; TP-V Sec. 5). ``edge``: some optimum lies on
  the grid edge.
  """
  base_width = int(widths[0] if base_width is None else base_width)
  if base_width not in [int(w) for w in widths]:
    raise ValueError(f"base_width {base_width} is not one of the widths {list(widths)}")
  per = {int(w): optimal_lr(lrs, losses[w]) for w in widths}
  grid = [per[int(w)]["grid"] for w in widths]
  interp = [per[int(w)]["interp"] for w in widths]
  base = np.asarray(losses[base_width], np.float64)
  base_i = int(np.argmin(np.where(np.isfinite(base), base, np.inf)))
  regret = {int(w): float(np.asarray(losses[w], np.float64)[base_i] - per[int(w)]["loss"])
            for w in widths}
  return {"per_width": per, "shift_grid": float(max(grid) / min(grid)),
          "shift_interp": float(max(interp) / min(interp)), "regret": regret,
          "edge": any(per[int(w)]["edge"] for w in widths)}


def transfer_verdict(summaries: Mapping[str, Mapping[str, Any]], mup_max: float = 2.0,
                     sp_min: float = 4.0) -> dict[str, Any]:
  """The μTransfer acceptance test (TP-V Fig. 1): over the swept widths the grid-optimal lr of
  every μP-type parametrization moves by at most ``mup_max`` (one 2× grid step), while SP's
  moves by at least ``sp_min``. An optimum on the grid edge makes the verdict fail (the true
  optimum is unknown: widen the grid). ``summaries``: ``{param: transfer_summary(...)}``."""
  reasons = []
  for p, s in summaries.items():
    if s["edge"]:
      reasons.append(f"{p}: an optimum is on the edge of the lr grid")
    if p == "sp" and s["shift_grid"] < sp_min:
      reasons.append(f"sp: optimum moves {s['shift_grid']:g}x < {sp_min:g}x")
    if p != "sp" and s["shift_grid"] > mup_max:
      reasons.append(f"{p}: optimum moves {s['shift_grid']:g}x > {mup_max:g}x")
  return {"passed": not reasons, "reasons": reasons,
          "shift_grid": {p: s["shift_grid"] for p, s in summaries.items()},
          "shift_interp": {p: s["shift_interp"] for p, s in summaries.items()}}


def run_batches(cfg: config_lib.ExperimentConfig, steps: int | None = None) -> list[dict]:
  """The first ``steps`` (default ``cfg.train.steps``) global train batches that a run of
  ``cfg`` reads: ``data.BatchIterator`` over the train split, shuffled with the run's seed
  (``data.shuffle_buffer_seed`` or ``seed``), on the run's mesh. Runs of a sweep that differ
  only in model or optimizer read the same batches, so a sweep reads them once per seed
  (``train_losses(cfg, batches=...)``) instead of once per run."""
  from jaxmtl import mesh as mesh_lib
  from jaxmtl.data import BatchIterator, get_source  # Local import: data pulls in TFDS.
  it = BatchIterator(get_source(cfg.data.name, "train", cfg.data.data_dir),
                     global_batch_size=cfg.data.batch_size, mesh=mesh_lib.make_mesh(cfg.mesh),
                     seed=cfg.seed if cfg.data.shuffle_buffer_seed is None
                     else cfg.data.shuffle_buffer_seed)
  return [next(it) for _ in range(cfg.train.steps if steps is None else steps)]


def train_losses(cfg: config_lib.ExperimentConfig, batches: Sequence[Mapping] | None = None
                 ) -> list[float]:
  """Trains ``cfg`` for ``cfg.train.steps`` steps with the library's own pieces
  (``train.loop.build`` / ``init_state`` / ``compile_train_step``) and returns the train loss
  of every step (no checkpoints, eval or logging). ``batches``: the run's batches from
  :func:`run_batches` (at least ``cfg.train.steps``; None: read them here). A diverged run
  stops early; its remaining losses are inf."""
  from jaxmtl.train import loop
  steps = cfg.train.steps
  if batches is None:
    batches = run_batches(cfg)
  if len(batches) < steps:
    raise ValueError(f"need {steps} batches (train.steps), got {len(batches)}")
  exp = loop.build(cfg)
  state = loop.init_state(exp)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
          for k, v in batches[0].items()}
  step = loop.compile_train_step(exp, spec)
  pending, out = [], []
  for t in range(steps):
    state, metrics = step(state, batches[t])
    pending.append(metrics["loss"])
    if len(pending) == 50 or t == steps - 1:
      out += [float(v) for v in jax.device_get(pending)]
      pending = []
      if not math.isfinite(out[-1]):
        return out + [math.inf] * (steps - len(out))
  return out
