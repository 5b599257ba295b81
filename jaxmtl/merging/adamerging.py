"""AdaMerging: learn merging coefficients by test-time entropy minimisation.

Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
arXiv 2310.02575; official code EnnengYang/AdaMerging (``src/main_task_wise_adamerging.py``,
``src/main_layer_wise_adamerging.py`` and their ``pp`` variants), re-implemented by FusionBench
(``fusion_bench/method/adamerging``, ``models/wrappers/layer_wise_fusion.py``).

The merged model is

    theta = theta_0 + sum_t lambda[t, g(leaf)] * tau_t[leaf]        (lambda: f32[T, G])

with one coefficient per task (``granularity="task"``, G = 1), per task and leaf
(``"layer"``: the official "layer" is one ``state_dict`` entry, i.e. one leaf), or per task and
group of leaves chosen by path regex (``groups=``, e.g. ``(r"(blocks/\\d+)/.*",)`` for one
coefficient per block: the anisotropic, learned-scaling view of aTLAS, Zhang et al.,
arXiv 2407.15739). ``lambda`` is trained with Adam to minimise, on unlabeled test inputs of every
task, the Shannon entropy of each task's softmax prediction averaged over the batch and summed
over tasks; each task is predicted with its own frozen head. AdaMerging++ (``plusplus=True``)
learns the coefficients of TIES-trimmed task vectors instead (the official ``pp`` scripts: top
20% by magnitude globally per task, mass sign election, the entries of each task that agree with
the elected sign).

Defaults are the official code's, differences of FusionBench are options (``PRESETS``):

=====================  ==================================  ==================================
option                 official (default)                  FusionBench ``adamerging/clip.yaml``
=====================  ==================================  ==================================
``init``               0.3 (``prior = 0.3``), pretrained 1    ``init_values: 0.3``
``clamp``              True: ``clamp(0, 1)`` in forward     ``clamp_weights: false``
``steps``              500 (``epochs``)                     ``max_steps: 1000``
``lr``                 Adam 1e-3, betas (0.9, 0.999)        Adam 1e-3
``batch_size``         16 per task (see note)               16 per task
``entropy_eps``        None: ``softmax * log_softmax``      1e-8: ``p * log(p + 1e-8)``
=====================  ==================================  ==================================

Note: the official loop ``for i, data in enumerate(loader): ...; if i > 0: break`` adds the mean
entropies of *two* mini-batches of 16 per task to the loss, which under Adam equals (up to its
epsilon) ``batch_size=32``; FusionBench draws one batch of 16. The default here is one batch of
16, as both papers state.

Implementation: one jitted pure step ``(state, constants, inputs) -> (state, metrics)`` over the
coefficients and the optax state. The pretrained leaves, the task vectors stacked per leaf
``[T, *s]`` and the frozen heads are inputs of that step (so they may be sharded, e.g. the task
vectors over their parameter axes); the merged parameters are computed inside the forward pass
(``tensordot`` over the task axis), so the task models are never materialised one by one and the
memory is that of the parameters + task vectors + activations. The mini-batches are drawn inside
the step from device-resident per-task inputs with ``fold_in(key, step)``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmtl.merging.methods.sparse import elect_and_merge, topk_masks
from jaxmtl.merging.task_vectors import (Exclude, check_compatible, compute_dtype, excluded_mask,
                                         leaf_paths)

PyTree = Any
# logits_fn(merged_params, heads, inputs) -> T logits [B, C_t], one per task, where inputs is a
# tuple of T arrays [B, ...]; heads is the frozen per-task head pytree passed to the step.
LogitsFn = Callable[[PyTree, PyTree, tuple], Sequence[jax.Array]]

__all__ = ["PRESETS", "AdaMergingResult", "AdaMergingState", "adamerging", "adamerging_fit",
           "coefficient_groups", "stack_task_vectors", "merge_with_coefficients",
           "softmax_entropy", "make_loss", "make_step", "plusplus_task_vectors",
           "effective_coefficients"]

GRANULARITIES = ("task", "layer")
OBJECTIVES = ("entropy", "supervised")

PRESETS: dict[str, dict[str, Any]] = {
    # EnnengYang/AdaMerging src/main_{task,layer}_wise_adamerging{,pp}.py
    "official": dict(init=0.3, clamp=True, steps=500, lr=1e-3, batch_size=16, entropy_eps=None),
    # tanganke/fusion_bench config/method/adamerging/clip.yaml + entropy_loss.py
    "fusionbench": dict(init=0.3, clamp=False, steps=1000, lr=1e-3, batch_size=16,
                        entropy_eps=1e-8),
}


# ------------------------------------------------------------------------------ coefficients


def coefficient_groups(pretrained: PyTree, *, granularity: str = "layer",
                       groups: Sequence[str] = (), exclude: Exclude = None
                       ) -> tuple[list[int | None], list[str]]:
  """Which coefficient column ``g`` each leaf uses.

  Args:
    pretrained: the pytree ``theta_0``.
    granularity: "task" (one column shared by all merged leaves) or "layer" (one per leaf, the
      official layer-wise AdaMerging: one coefficient per ``state_dict`` entry).
    groups: path regexes (``re.fullmatch`` on :func:`jaxmtl.merging.path_str`), used with
      ``granularity="layer"``: a leaf matching pattern ``i`` joins the group named by the
      pattern's capture groups joined by ``/`` (or by the pattern itself when it has none), so
      ``r"(blocks/\\d+)/.*"`` gives one coefficient per block; leaves matching no pattern keep
      their own (layer-wise) column.
    exclude: path regex(es) of leaves not merged (kept from ``pretrained``, no coefficient);
      non-float leaves are always excluded.

  Returns:
    (per leaf in ``tree_leaves`` order the column index or None for excluded leaves,
    the ``G`` column names in first-appearance order).
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"adamerging: granularity={granularity!r} is not valid; choose one of "
                     f"{list(GRANULARITIES)}")
  if isinstance(groups, str):
    groups = (groups,)
  if groups and granularity != "layer":
    raise ValueError(f"adamerging: groups={tuple(groups)!r} needs granularity='layer', got "
                     f"{granularity!r}")
  pats = []
  for p in groups:
    try:
      pats.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"adamerging: group pattern {p!r} is not a valid regex: {e}") from e
  paths = leaf_paths(pretrained)
  excluded = excluded_mask(pretrained, exclude)
  names: list[str] = []
  index: dict[str, int] = {}
  out: list[int | None] = []
  for path, e in zip(paths, excluded):
    if e:
      out.append(None)
      continue
    if granularity == "task":
      name = "all"
    else:
      name = path
      for pat in pats:
        m = pat.fullmatch(path)
        if m:
          name = "/".join(m.groups()) if m.groups() else pat.pattern
          break
    if name not in index:
      index[name] = len(names)
      names.append(name)
    out.append(index[name])
  if not names:
    raise ValueError("adamerging: every leaf is excluded (exclude=" f"{exclude!r}); nothing to "
                     "merge")
  return out, names


def effective_coefficients(raw: jax.Array, clamp: bool) -> jax.Array:
  """The coefficients the forward pass uses: ``clamp(raw, 0, 1)`` when ``clamp`` (official
  ``torch.clamp``: gradient 1 on ``[0, 1]`` including its ends, 0 outside), else ``raw``."""
  if not clamp:
    return raw
  inside = (raw >= 0) & (raw <= 1)
  return jnp.where(inside, raw, jnp.clip(raw, 0.0, 1.0))


# ------------------------------------------------------------------------------ task vectors


def stack_task_vectors(task_vectors: Sequence[PyTree]) -> PyTree:
  """``T`` task-vector pytrees -> one pytree whose leaves are ``[T, *s]`` (shardable input)."""
  if isinstance(task_vectors, (str, bytes)) or not isinstance(task_vectors, Sequence):
    raise TypeError(f"task_vectors must be a sequence of pytrees, got "
                    f"{type(task_vectors).__name__}")
  if not task_vectors:
    raise ValueError("task_vectors must hold at least one task vector, got an empty sequence")
  if len(task_vectors) > 1:
    check_compatible(task_vectors[0], task_vectors[1:], what="task_vectors[1:]")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *task_vectors)


def _stacked_leaves(pretrained: PyTree, stacked: PyTree, group_of_leaf: list[int | None]
                    ) -> tuple[int, list[jax.Array | None]]:
  """Validated ``[T, *s]`` leaves of the stacked task vectors (None where not merged)."""
  pre, treedef = jax.tree_util.tree_flatten(pretrained)
  got, got_def = jax.tree_util.tree_flatten(stacked)
  if got_def != treedef:
    raise ValueError(f"stacked task vectors have structure {got_def}, pretrained has {treedef}")
  paths = leaf_paths(pretrained)
  num = None
  out: list[jax.Array | None] = []
  for path, a, s, g in zip(paths, pre, got, group_of_leaf):
    if np.shape(s)[1:] != np.shape(a):
      raise ValueError(f"leaf {path!r}: pretrained has shape {np.shape(a)} but the stacked task "
                       f"vectors have shape {np.shape(s)} (expected [T, *{np.shape(a)}])")
    if num is None:
      num = np.shape(s)[0]
    elif np.shape(s)[0] != num:
      raise ValueError(f"leaf {path!r}: {np.shape(s)[0]} task vectors, other leaves have {num}")
    out.append(None if g is None else s)
  return int(num), out


def plusplus_task_vectors(stacks: Sequence[jax.Array | None], density: float = 0.2
                          ) -> list[jax.Array | None]:
  """AdaMerging++'s task vectors: TIES-trimmed, sign-elected, per task.

  Official ``ties_merging_split(tv_flat_checks, reset_thresh=20, merge_func="dis-sum")``:
  keep each task's top ``density`` magnitudes over all merged leaves (``topk_values_mask``,
  ties kept), elect a sign per entry by mass (``resolve_sign``), and keep the entries of each
  task whose sign agrees (``selected_entries``). Implemented with
  :func:`jaxmtl.merging.methods.topk_masks` (scope "global", rule "official") and
  :func:`jaxmtl.merging.methods.elect_and_merge`: the elected-sign sum is non-zero exactly where
  some entry agrees, and then has the elected sign.

  Args:
    stacks: per leaf ``[T, *s]`` (None for leaves not merged).
  Returns:
    per leaf ``[T, *s]`` (None kept).
  """
  masks = topk_masks(stacks, density, scope="global", rule="official")
  trimmed = [None if s is None else jnp.where(m, s, jnp.zeros_like(s))
             for s, m in zip(stacks, masks)]
  totals = elect_and_merge(trimmed, "mass", "sum")
  out = []
  for s, tot in zip(trimmed, totals):
    if s is None:
      out.append(None)
      continue
    agree = (jnp.sign(s) == jnp.sign(tot)[None]) & (tot[None] != 0)
    out.append(jnp.where(agree, s, jnp.zeros_like(s)))
  return out


def _merge_leaves(pre: Sequence[jax.Array], stacks: Sequence[jax.Array | None],
                  coefficients: jax.Array, group_of_leaf: Sequence[int | None]
                  ) -> list[jax.Array]:
  """``theta_0 + sum_t coefficients[t, g] tau_t`` per leaf, without a per-task model."""
  out = []
  for a, s, g in zip(pre, stacks, group_of_leaf):
    if g is None or s is None:
      out.append(a)
      continue
    dt = compute_dtype(a.dtype)
    delta = jnp.tensordot(coefficients[:, g].astype(dt), s.astype(dt), axes=1)
    out.append((jnp.asarray(a, dt) + delta).astype(a.dtype))
  return out


def merge_with_coefficients(pretrained: PyTree, stacked_task_vectors: PyTree,
                            coefficients: jax.Array | np.ndarray, *,
                            granularity: str = "layer", groups: Sequence[str] = (),
                            exclude: Exclude = None) -> PyTree:
  """``theta_0 + sum_t coefficients[t, g(leaf)] tau_t`` with given coefficients ``[T, G]``.

  ``coefficients`` are used as given (no clamp); the grouping options must be those the
  coefficients were learned with. Returns the pretrained structure, shapes and dtypes.
  """
  group_of_leaf, names = coefficient_groups(pretrained, granularity=granularity, groups=groups,
                                            exclude=exclude)
  num, stacks = _stacked_leaves(pretrained, stacked_task_vectors, group_of_leaf)
  coefficients = jnp.asarray(coefficients, jnp.float32)
  if coefficients.shape != (num, len(names)):
    raise ValueError(f"coefficients have shape {coefficients.shape}, expected "
                     f"({num}, {len(names)}) = (tasks, groups {names[:4]}...)")
  pre, treedef = jax.tree_util.tree_flatten(pretrained)
  return jax.tree_util.tree_unflatten(treedef, _merge_leaves(pre, stacks, coefficients,
                                                             group_of_leaf))


# ------------------------------------------------------------------------------ objective


def softmax_entropy(logits: jax.Array, eps: float | None = None) -> jax.Array:
  """Shannon entropy of ``softmax(logits)`` over the last axis: ``[B, C] -> [B]`` (at least
  float32).

  ``eps=None``: ``-(softmax * log_softmax).sum(-1)`` (official ``softmax_entropy``);
  ``eps=1e-8``: ``-(p * log(p + eps)).sum(-1)`` (FusionBench ``entropy_loss``).
  """
  logits = jnp.asarray(logits, compute_dtype(jnp.result_type(logits)))
  if eps is None:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  p = jax.nn.softmax(logits, axis=-1)
  return -jnp.sum(p * jnp.log(p + eps), axis=-1)


def make_loss(logits_fn: LogitsFn, treedef: Any, group_of_leaf: Sequence[int | None], *,
              clamp: bool = True, objective: str = "entropy", entropy_eps: float | None = None
              ) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """``loss(raw [T, G], pre_leaves, stacks, heads, xs, ys) -> (sum_t L_t, L [T])``.

  ``L_t`` is the batch mean of the softmax entropy of task ``t``'s logits (``objective=
  "entropy"``) or of the cross-entropy with integer labels ``ys[t]`` (``"supervised"``, an
  oracle that sees test labels). ``xs``/``ys``: tuples of ``T`` arrays ``[B, ...]`` / ``[B]``.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"adamerging: objective={objective!r} is not valid; choose one of "
                     f"{list(OBJECTIVES)}")
  group_of_leaf = list(group_of_leaf)

  def loss(raw, pre, stacks, heads, xs, ys):
    coefficients = effective_coefficients(raw, clamp)
    params = jax.tree_util.tree_unflatten(treedef, _merge_leaves(pre, stacks, coefficients,
                                                                 group_of_leaf))
    logits = list(logits_fn(params, heads, tuple(xs)))
    if len(logits) != len(xs):
      raise ValueError(f"adamerging: logits_fn returned {len(logits)} logits for {len(xs)} "
                       "tasks")
    per_task = []
    for t, lg in enumerate(logits):
      if objective == "entropy":
        per_task.append(jnp.mean(softmax_entropy(lg, entropy_eps)))
      else:
        per_task.append(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(lg, compute_dtype(lg.dtype)), ys[t])))
    per_task = jnp.stack(per_task)
    return jnp.sum(per_task), per_task

  return loss


# ------------------------------------------------------------------------------ the step


class AdaMergingState(NamedTuple):
  """What a step changes: step counter (int32), raw coefficients ``[T, G]``, Adam state."""
  step: jax.Array
  raw: jax.Array
  opt_state: Any


class Constants(NamedTuple):
  """Inputs a step reads but never changes (all may be sharded)."""
  pre: list            # pretrained leaves
  stacks: list         # [T, *s] task vectors per leaf (None: not merged)
  heads: Any           # frozen per-task heads (any pytree; may be None)
  inputs: tuple        # T arrays [N_t, ...] of unlabeled test inputs
  labels: tuple        # T int arrays [N_t] (supervised objective) or ()
  key: jax.Array       # PRNG key for the mini-batches


def make_step(loss: Callable, optimizer: optax.GradientTransformation, batch_size: int,
              batch_sharding: Any = None):
  """``step(state, constants) -> (state, metrics)``: sample, loss, gradient, Adam update.

  Task ``t``'s mini-batch at step ``s`` is ``batch_size`` distinct indices, a uniform random
  subset drawn with ``fold_in(fold_in(key, s), t)`` (the official loader reshuffles every
  step). Pure; meant to be jitted once with the state donated.
  """
  grad_fn = jax.value_and_grad(loss, has_aux=True)

  def step(state: AdaMergingState, c: Constants):
    key = jax.random.fold_in(c.key, state.step)
    xs, ys = [], []
    for t, x in enumerate(c.inputs):
      if batch_size == x.shape[0]:  # full batch: the mean loss does not depend on the order
        idx = jnp.arange(batch_size)
      else:
        # A uniform subset without replacement: the batch_size largest of N uniform keys
        # (top_k is O(N); jax.random.choice(replace=False) sorts a permutation, ~10x slower).
        u = jax.random.uniform(jax.random.fold_in(key, t), (x.shape[0],))
        idx = jax.lax.top_k(u, batch_size)[1]
      xt = jnp.take(x, idx, axis=0)
      if batch_sharding is not None:
        xt = jax.lax.with_sharding_constraint(xt, batch_sharding)
      xs.append(xt)
      ys.append(jnp.take(c.labels[t], idx, axis=0) if c.labels else None)
    (total, per_task), grad = grad_fn(state.raw, c.pre, c.stacks, c.heads, tuple(xs),
                                      tuple(ys))
    updates, opt_state = optimizer.update(grad, state.opt_state, state.raw)
    raw = optax.apply_updates(state.raw, updates)
    metrics = {"loss": total, "task_loss": per_task, "grad_norm": jnp.linalg.norm(grad)}
    return AdaMergingState(state.step + 1, raw, opt_state), metrics

  return step


# ------------------------------------------------------------------------------ driver


@dataclasses.dataclass
class AdaMergingResult:
  """Outcome of :func:`adamerging_fit`.

  Attributes:
    merged: the merged pytree (pretrained structure, shapes, dtypes).
    coefficients: the coefficients the merged model uses, ``[T, G]`` (clamped when ``clamp``).
    raw: the trained raw coefficients ``[T, G]``.
    group_names: the ``G`` column names (leaf paths for "layer", "all" for "task").
    losses: ``[steps]`` objective before each update (summed over tasks).
    task_losses: ``[steps, T]`` per-task objective.
    group_of_leaf: per leaf the column index or None (excluded).
  """
  merged: PyTree
  coefficients: np.ndarray
  raw: np.ndarray
  group_names: list[str]
  losses: np.ndarray
  task_losses: np.ndarray
  group_of_leaf: list[int | None]


_merge_jit = jax.jit(_merge_leaves, static_argnums=3)
_plusplus_jit = jax.jit(plusplus_task_vectors, static_argnums=1)


@functools.lru_cache(maxsize=64)
def _compiled_step(logits_fn, treedef, group_of_leaf, clamp, objective, entropy_eps, lr,
                   batch_size, batch_sharding):
  """The jitted step and its optimizer, cached so repeated fits (seeds, variants) with the
  same model and options compile once."""
  loss = make_loss(logits_fn, treedef, group_of_leaf, clamp=clamp, objective=objective,
                   entropy_eps=entropy_eps)
  optimizer = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
  return jax.jit(make_step(loss, optimizer, batch_size, batch_sharding),
                 donate_argnums=0), optimizer


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"adamerging: {name} must be a non-negative int, got {value!r}")
  return int(value)


def adamerging_fit(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
                   logits_fn: LogitsFn, inputs: Sequence[Any], key: jax.Array | None = None,
                   task_vectors: Sequence[PyTree] | None = None,
                   stacked_task_vectors: PyTree | None = None, heads: PyTree = None,
                   labels: Sequence[Any] | None = None, granularity: str = "layer",
                   groups: Sequence[str] = (), init: float | jax.Array = 0.3,
                   clamp: bool = True, steps: int = 500, lr: float = 1e-3,
                   batch_size: int = 16, objective: str = "entropy",
                   entropy_eps: float | None = None, plusplus: bool = False,
                   density: float = 0.2, exclude: Exclude = None,
                   batch_sharding: Any = None, progress: bool = False,
                   callback: Callable[[int, dict], None] | None = None) -> AdaMergingResult:
  """Learns AdaMerging coefficients; returns the merged model, coefficients and losses.

  Args:
    pretrained: ``theta_0`` (the shared part of the model: heads are passed via ``heads``).
    finetuned: ``T`` pytrees shaped like ``pretrained``; or ``task_vectors=`` (``T`` pytrees),
      or ``stacked_task_vectors=`` (one pytree of ``[T, *s]`` leaves, e.g. already sharded).
    logits_fn: ``logits_fn(merged_params, heads, xs) -> T logits [B, C_t]`` for the tuple of
      per-task inputs ``xs`` (each ``[B, ...]``); task ``t`` must use its own head.
    inputs: ``T`` arrays ``[N_t, ...]`` of unlabeled test inputs (device-resident; shard them
      if needed); mini-batches of ``batch_size`` are drawn from them inside the step.
    key: PRNG key for the mini-batches (required).
    heads: frozen per-task head parameters passed to ``logits_fn`` (any pytree).
    labels: ``T`` int arrays ``[N_t]``, only for ``objective="supervised"``.
    granularity, groups, exclude: see :func:`coefficient_groups`.
    init: initial coefficient (official ``prior = 0.3``; FusionBench ``init_values: 0.3``), a
      scalar or an array ``[T, G]``; the pretrained model's coefficient is fixed at 1.
    clamp: clamp the coefficients to ``[0, 1]`` in the forward pass (official); FusionBench's
      CLIP config has ``clamp_weights: false``.
    steps: Adam steps (official 500 "epochs"; FusionBench ``max_steps: 1000``).
    lr: Adam learning rate (both 1e-3; betas 0.9/0.999, eps 1e-8 as ``torch.optim.Adam``).
    batch_size: examples per task per step (16 in both; see the module note on the official
      two mini-batches).
    objective: "entropy" (the paper) or "supervised" (cross-entropy on ``labels``: an oracle).
    entropy_eps: None (official ``log_softmax``) or e.g. 1e-8 (FusionBench ``log(p + eps)``).
    plusplus: AdaMerging++: learn coefficients of :func:`plusplus_task_vectors` (TIES-trimmed
      at ``density``, official ``K = 20`` -> 0.2).
    batch_sharding: optional sharding each sampled ``[B, ...]`` batch is constrained to.
    progress: show a tqdm bar.
    callback: ``callback(step, metrics)`` with host values every step (for logging/plots).

  Returns:
    :class:`AdaMergingResult`.
  """
  if key is None:
    raise TypeError("adamerging: needs an explicit PRNG `key=` (jax.random.key(seed)) for the "
                    "mini-batches")
  given = [x is not None for x in (finetuned, task_vectors, stacked_task_vectors)]
  if sum(given) != 1:
    raise ValueError("adamerging: pass exactly one of `finetuned`, `task_vectors=` and "
                     "`stacked_task_vectors=`")
  steps = _check_positive_int("steps", steps)
  batch_size = _check_positive_int("batch_size", batch_size)
  if batch_size == 0:
    raise ValueError("adamerging: batch_size must be positive")
  if objective == "supervised" and labels is None:
    raise ValueError("adamerging: objective='supervised' needs `labels=` (T int arrays)")
  group_of_leaf, names = coefficient_groups(pretrained, granularity=granularity, groups=groups,
                                            exclude=exclude)
  if finetuned is not None:
    check_compatible(pretrained, finetuned)
    stacked_task_vectors = jax.tree.map(
        lambda a, *fs: jnp.stack([jnp.asarray(f, compute_dtype(a.dtype)) for f in fs])
        - jnp.asarray(a, compute_dtype(a.dtype))[None], pretrained, *finetuned)
  elif task_vectors is not None:
    stacked_task_vectors = stack_task_vectors(task_vectors)
  num_tasks, stacks = _stacked_leaves(pretrained, stacked_task_vectors, group_of_leaf)
  if plusplus:
    stacks = _plusplus_jit(stacks, float(density))
  inputs = tuple(jnp.asarray(x) if not isinstance(x, jax.Array) else x for x in inputs)
  if len(inputs) != num_tasks:
    raise ValueError(f"adamerging: {len(inputs)} input arrays for {num_tasks} task vectors")
  for t, x in enumerate(inputs):
    if x.shape[0] < batch_size:
      raise ValueError(f"adamerging: inputs[{t}] has {x.shape[0]} examples, fewer than "
                       f"batch_size={batch_size}")
  ys: tuple = ()
  if objective == "supervised":
    ys = tuple(jnp.asarray(y, jnp.int32) for y in labels)
    if len(ys) != num_tasks or any(y.shape[0] != x.shape[0] for x, y in zip(inputs, ys)):
      raise ValueError("adamerging: labels must be T int arrays with one label per input")

  pre, treedef = jax.tree_util.tree_flatten(pretrained)
  raw0 = jnp.broadcast_to(jnp.asarray(init, jnp.float32), (num_tasks, len(names)))
  step_fn, optimizer = _compiled_step(logits_fn, treedef, tuple(group_of_leaf), bool(clamp),
                                      objective, entropy_eps, float(lr), batch_size,
                                      batch_sharding)
  state = AdaMergingState(jnp.zeros((), jnp.int32), jnp.array(raw0), optimizer.init(raw0))
  consts = Constants(pre, stacks, heads, inputs, ys, key)

  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=steps, desc="adamerging", unit="step", disable=not progress,
             dynamic_ncols=True)
  history = []  # device metrics; fetched lazily so the host never waits on the device
  for s in range(steps):
    state, metrics = step_fn(state, consts)
    history.append(metrics)
    if callback is not None and s:
      callback(s - 1, jax.device_get(history[s - 1]))  # step s-1's, once step s is dispatched
    if progress and (s % 50 == 49 or s == steps - 1):
      bar.set_postfix(loss=f"{float(history[max(s - 1, 0)]['loss']):.4f}")
    bar.update(1)
  bar.close()
  history = jax.device_get(history)
  if callback is not None and steps:
    callback(steps - 1, history[-1])

  coefficients = effective_coefficients(state.raw, clamp)
  merged = jax.tree_util.tree_unflatten(
      treedef, _merge_jit(pre, stacks, coefficients, tuple(group_of_leaf)))
  losses = np.asarray([h["loss"] for h in history], np.float32)
  task_losses = (np.stack([h["task_loss"] for h in history]) if history
                 else np.zeros((0, num_tasks), np.float32))
  return AdaMergingResult(merged, np.asarray(coefficients), np.asarray(state.raw), names,
                          losses, task_losses, group_of_leaf)


def adamerging(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
               logits_fn: LogitsFn, inputs: Sequence[Any], key: jax.Array | None = None,
               **options: Any) -> PyTree:
  """AdaMerging (task-wise, layer-wise, grouped; ++ with ``plusplus=True``): the merged pytree.

  Same arguments as :func:`adamerging_fit` (which also returns the coefficients and losses);
  defaults are the official code's, ``**PRESETS["fusionbench"]`` gives FusionBench's.
  """
  return adamerging_fit(pretrained, finetuned, logits_fn=logits_fn, inputs=inputs, key=key,
                        **options).merged
