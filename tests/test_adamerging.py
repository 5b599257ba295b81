"""AdaMerging: gradients, objective, known optima, AdaMerging++ trimming, sharding, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxmtl.merging as M
# Imported by name: the package's `adamerging` *function* shadows the submodule attribute.
import importlib

A = importlib.import_module("jaxmtl.merging.adamerging")


def _mlp_problem(seed=0, tasks=3, d=8, h=16, c=4, n=64, dtype=np.float32):
  """A tanh MLP backbone, T task vectors, one frozen head per task, T input sets."""
  r = np.random.default_rng(seed)
  pre = {"l1": {"kernel": r.normal(size=(d, h)) / np.sqrt(d), "bias": 0.1 * r.normal(size=h)},
         "l2": {"kernel": r.normal(size=(h, h)) / np.sqrt(h), "bias": 0.1 * r.normal(size=h)}}
  pre = jax.tree.map(lambda a: a.astype(dtype), pre)
  tvs = [jax.tree.map(lambda a: (0.5 * r.normal(size=a.shape)).astype(dtype), pre)
         for _ in range(tasks)]
  heads = [{"kernel": r.normal(size=(h, c)).astype(dtype)} for _ in range(tasks)]
  inputs = [r.normal(size=(n, d)).astype(dtype) for _ in range(tasks)]
  return pre, tvs, heads, inputs


def _logits_fn(params, heads, xs):
  out = []
  for x, head in zip(xs, heads):
    z = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    z = jnp.tanh(z @ params["l2"]["kernel"] + params["l2"]["bias"])
    out.append(z @ head["kernel"])
  return out


def _loss_at(pre, tvs, heads, xs, granularity="layer", groups=(), clamp=True,
             objective="entropy", ys=None, entropy_eps=None):
  group_of_leaf, names = A.coefficient_groups(pre, granularity=granularity, groups=groups)
  leaves, treedef = jax.tree_util.tree_flatten(pre)
  _, stacks = A._stacked_leaves(pre, A.stack_task_vectors(tvs), group_of_leaf)
  loss = A.make_loss(_logits_fn, treedef, group_of_leaf, clamp=clamp, objective=objective,
                     entropy_eps=entropy_eps)
  return jax.jit(lambda raw: loss(raw, leaves, stacks, heads, tuple(xs), ys)[0]), len(names)


def test_gradient_matches_finite_differences(granularity="layer", groups=(r"l1/.*",)):
  """Grouped layer-wise coefficients (l1's two leaves share a column, l2's have their own);
  task-wise is the one-column case of the same code."""
  with jax.enable_x64(True):
    pre, tvs, heads, xs = _mlp_problem(dtype=np.float64)
    f, g = _loss_at(pre, tvs, heads, xs, granularity, groups)
    assert g == 3
    raw = jnp.asarray(np.random.default_rng(1).uniform(0.1, 0.9, size=(3, g)))
    grad = np.asarray(jax.grad(f)(raw))
    fd = np.zeros_like(grad)
    h = 1e-6
    for idx in np.ndindex(*raw.shape):
      e = np.zeros(raw.shape)
      e[idx] = h
      fd[idx] = (f(raw + e) - f(raw - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.abs(grad).min() > 1e-6  # every coefficient matters


def test_clamp_gradient_is_torch_clamp():
  pre, tvs, heads, xs = _mlp_problem()
  f, g = _loss_at(pre, tvs, heads, xs, "task")
  fg = jax.jit(jax.value_and_grad(f))
  raw = jnp.asarray([[-0.2], [0.0], [1.3]], jnp.float32)  # below, at the edge, above
  value, grad = fg(raw)
  assert grad[0, 0] == 0 and grad[2, 0] == 0 and grad[1, 0] != 0
  # Outside [0, 1] the forward uses the clamped value.
  np.testing.assert_allclose(value, fg(jnp.asarray([[0.0], [0.0], [1.0]]))[0], rtol=1e-6)
  f_free, _ = _loss_at(pre, tvs, heads, xs, "task", clamp=False)
  assert np.all(np.asarray(jax.grad(f_free)(raw)) != 0)


def test_merge_is_pretrained_plus_weighted_task_vectors():
  pre, tvs, _, _ = _mlp_problem()
  lam = np.asarray([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, -0.1, 0.0]],
                   np.float32)  # columns: l1/bias, l1/kernel, l2/bias, l2/kernel
  merged = A.merge_with_coefficients(pre, A.stack_task_vectors(tvs), lam)
  for g, (layer, name) in enumerate([("l1", "bias"), ("l1", "kernel"), ("l2", "bias"),
                                     ("l2", "kernel")]):
    want = pre[layer][name] + sum(lam[t, g] * tvs[t][layer][name] for t in range(3))
    np.testing.assert_allclose(merged[layer][name], want, rtol=1e-6, atol=1e-6)


def test_zero_steps_is_task_arithmetic_at_init():
  pre, tvs, heads, xs = _mlp_problem()
  fts = [jax.tree.map(jnp.add, pre, tv) for tv in tvs]
  out = M.adamerging(pre, fts, logits_fn=_logits_fn, inputs=xs, heads=heads,
                     key=jax.random.key(0), steps=0)
  ref = M.task_arithmetic(pre, fts, scaling=0.3)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_coefficient_groups_names_and_exclusion():
  tree = {"blocks": {"0": {"a": jnp.ones(2), "b": jnp.ones(2)}, "1": {"a": jnp.ones(2)}},
          "embed": jnp.ones(3), "head": jnp.ones(2), "step": jnp.zeros((), jnp.int32)}
  gl, names = A.coefficient_groups(tree, groups=(r"(blocks/\d+)/.*",), exclude=r"head")
  # tree_leaves order: blocks/0/a, blocks/0/b, blocks/1/a, embed, head, step
  assert gl == [0, 0, 1, 2, None, None]
  assert names == ["blocks/0", "blocks/1", "embed"]
  gl, names = A.coefficient_groups(tree, granularity="task")
  assert gl == [0, 0, 0, 0, 0, None] and names == ["all"]


def test_softmax_entropy_hand_values():
  np.testing.assert_allclose(A.softmax_entropy(jnp.zeros((2, 4))), [np.log(4)] * 2, rtol=1e-6)
  p = np.array([0.7, 0.2, 0.1])
  want = -np.sum(p * np.log(p))
  np.testing.assert_allclose(A.softmax_entropy(jnp.log(p)[None]), [want], rtol=1e-6)
  np.testing.assert_allclose(A.softmax_entropy(jnp.log(p)[None], eps=1e-8),
                             [-np.sum(p * np.log(p + 1e-8))], rtol=1e-6)


def test_entropy_decreases():
  pre, tvs, heads, xs = _mlp_problem(seed=3, n=256)
  res = M.adamerging_fit(pre, task_vectors=tvs, logits_fn=_logits_fn, inputs=xs, heads=heads,
                         key=jax.random.key(0), steps=80, lr=2e-2)
  assert res.losses.shape == (80,) and res.task_losses.shape == (80, 3)
  assert res.losses[-20:].mean() < res.losses[:5].mean() - 0.05

  @jax.jit
  def full_entropy(params):
    return sum(A.softmax_entropy(lg).mean() for lg in _logits_fn(params, heads, xs))

  start = M.task_arithmetic(pre, task_vectors=tvs, scaling=0.3)
  assert full_entropy(res.merged) < full_entropy(start) - 0.05
  assert res.coefficients.min() >= 0 and res.coefficients.max() <= 1  # clamped


def test_entropy_known_optimum_is_the_clamp_corner():
  """tau_1 = +theta_0 sharpens, tau_2 = -theta_0 flattens every prediction: the entropy of
  softmax(s z) decreases in s, so the clamped optimum is lambda = (1, 0)."""
  r = np.random.default_rng(0)
  pre = {"w": r.normal(size=(6, 5)).astype(np.float32)}
  tvs = [pre, jax.tree.map(jnp.negative, pre)]
  xs = [r.normal(size=(128, 6)).astype(np.float32)] * 2
  fn = lambda p, h, xs: [x @ p["w"] for x in xs]
  res = M.adamerging_fit(pre, task_vectors=tvs, logits_fn=fn, inputs=xs, key=jax.random.key(1),
                         granularity="task", steps=200, lr=1e-2)
  np.testing.assert_array_equal(res.coefficients, [[1.0], [0.0]])


def test_supervised_toy_converges_to_the_optimum(granularity="layer"):
  """Well-specified softmax regression: labels drawn from theta_0 + sum lambda* tau. Full-batch
  Adam must reach the exact minimiser (found by scipy), which lies near lambda*."""
  from scipy.optimize import minimize
  r = np.random.default_rng(0)
  d, c, n = 6, 3, 2000
  pre = {"b": r.normal(size=c).astype(np.float32), "w": r.normal(size=(d, c)).astype(np.float32)}
  tvs = [jax.tree.map(lambda a: r.normal(size=a.shape).astype(np.float32), pre)
         for _ in range(2)]
  star = (np.array([[0.7], [0.2]]) if granularity == "task"
          else np.array([[0.7, 0.1], [0.2, 0.9]]))  # columns: b, w
  cols = star.shape[1]
  w = pre["w"] + sum(star[t, -1] * tvs[t]["w"] for t in range(2))
  b = pre["b"] + sum(star[t, 0] * tvs[t]["b"] for t in range(2))
  xs, ys = [], []
  for _ in range(2):
    x = r.normal(size=(n, d)).astype(np.float32)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ys.append(np.array([r.choice(c, p=pi) for pi in p]))
    xs.append(x)
  fn = lambda p, h, xs: [x @ p["w"] + p["b"] for x in xs]
  res = M.adamerging_fit(pre, task_vectors=tvs, logits_fn=fn, inputs=xs, labels=ys,
                         objective="supervised", key=jax.random.key(0), batch_size=n,
                         granularity=granularity, clamp=False, steps=300, lr=4e-2)
  f, _ = _loss_at_linear(pre, tvs, xs, ys, granularity)
  fg = jax.jit(jax.value_and_grad(f))

  def scipy_fg(v):
    val, grad = fg(jnp.asarray(v.reshape(2, cols), jnp.float32))
    return float(val), np.asarray(grad, np.float64).ravel()

  opt = minimize(scipy_fg, np.full(2 * cols, 0.3), jac=True, method="L-BFGS-B",
                 options=dict(gtol=1e-7, ftol=1e-12))
  best = opt.x.reshape(2, cols)
  np.testing.assert_allclose(res.coefficients, best, atol=3e-3)
  np.testing.assert_allclose(best, star, atol=0.1)


def _loss_at_linear(pre, tvs, xs, ys, granularity):
  fn = lambda p, h, xs: [x @ p["w"] + p["b"] for x in xs]
  group_of_leaf, names = A.coefficient_groups(pre, granularity=granularity)
  leaves, treedef = jax.tree_util.tree_flatten(pre)
  _, stacks = A._stacked_leaves(pre, A.stack_task_vectors(tvs), group_of_leaf)
  loss = A.make_loss(fn, treedef, group_of_leaf, clamp=False, objective="supervised")
  ys = tuple(jnp.asarray(y, jnp.int32) for y in ys)
  return jax.jit(lambda raw: loss(raw, leaves, stacks, None, tuple(xs), ys)[0]), len(names)


def _official_ties_split(flat, k):
  """numpy transcription of the official ties_merging_split(reset_thresh=k, 'dis-sum')."""
  n, d = flat.shape
  kk = d - int(d * k)
  kth = np.sort(np.abs(flat), axis=1)[:, kk - 1:kk]
  trimmed = flat * (np.abs(flat) >= kth)
  sign = np.sign(trimmed.sum(0))
  sign[sign == 0] = np.sign(sign.sum())
  keep = np.where(sign[None] > 0, trimmed > 0, trimmed < 0)
  return trimmed * keep


def test_plusplus_uses_official_ties_split():
  """AdaMerging++ at init = theta_0 + 0.3 * sum_t (official ties_merging_split of the tasks)."""
  pre, tvs, heads, xs = _mlp_problem()
  res = M.adamerging_fit(pre, task_vectors=tvs, logits_fn=_logits_fn, inputs=xs, heads=heads,
                         key=jax.random.key(0), steps=0, plusplus=True, density=0.2)
  flat = np.stack([np.concatenate([np.ravel(x) for x in jax.tree.leaves(tv)]) for tv in tvs])
  want = np.concatenate([np.ravel(x) for x in jax.tree.leaves(pre)]) + 0.3 * (
      _official_ties_split(flat, 0.2).sum(0))
  got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(res.merged)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Hand case: one leaf, 2 tasks, density 0.5 -> each keeps its 2 largest of 4 magnitudes.
  s = jnp.asarray([[3.0, -1.0, 0.5, -2.0], [-4.0, 2.0, 0.1, 1.0]])
  (o,) = jax.jit(A.plusplus_task_vectors, static_argnums=1)([s], 0.5)
  # trimmed: [3, 0, 0, -2], [-4, 2, 0, 0]; signs of sums: [-1, +1, 0->majority(-1+1-1=-1), -1]
  np.testing.assert_array_equal(o, [[0, 0, 0, -2], [-4, 2, 0, 0]])


def test_sharded_inputs_give_the_unsharded_result():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices; see tests/conftest.py")
  pre, tvs, heads, xs = _mlp_problem(seed=5, tasks=2, d=8, h=16, n=32)
  # Full batches (batch_size = N): sampling is covered elsewhere and its sort is slow to
  # compile for 8 devices.
  kw = dict(logits_fn=_logits_fn, heads=heads, key=jax.random.key(2), steps=3, lr=1e-2,
            batch_size=32)
  ref = M.adamerging_fit(pre, task_vectors=tvs, inputs=xs, **kw)
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
  stacked = A.stack_task_vectors(tvs)
  # Task vectors sharded over the task axis (data) and their last parameter axis (fsdp).
  stacked = jax.tree.map(lambda s: jax.device_put(s, NamedSharding(
      mesh, P("data", *([None] * (s.ndim - 2)), "fsdp"))), stacked)
  pre_s = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(
      mesh, P(*([None] * (a.ndim - 1)), "fsdp"))), pre)
  xs_s = [jax.device_put(x, NamedSharding(mesh, P("fsdp"))) for x in xs]
  assert len(jax.tree.leaves(stacked)[0].sharding.device_set) == 8
  out = M.adamerging_fit(pre_s, stacked_task_vectors=stacked, inputs=xs_s,
                         batch_sharding=NamedSharding(mesh, P(("data", "fsdp"))), **kw)
  np.testing.assert_allclose(out.coefficients, ref.coefficients, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.losses, ref.losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out.merged), jax.tree.leaves(ref.merged)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fusionbench_preset_runs_and_leaves_coefficients_unclamped():
  pre, tvs, heads, xs = _mlp_problem(seed=3, n=256)
  opts = dict(A.PRESETS["fusionbench"], steps=40, lr=1e-1)
  res = M.adamerging_fit(pre, task_vectors=tvs, logits_fn=_logits_fn, inputs=xs, heads=heads,
                         key=jax.random.key(0), **opts)
  np.testing.assert_array_equal(res.coefficients, res.raw)  # no clamp
  assert res.coefficients.min() < 0 or res.coefficients.max() > 1


@pytest.mark.parametrize("kwargs,match", [
  (dict(granularity="block"), "granularity='block' is not valid"),
  (dict(groups=("(",)), "not a valid regex"),
  (dict(granularity="task", groups=("l1/.*",)), "needs granularity='layer'"),
  (dict(objective="kl"), "objective='kl' is not valid"),
  (dict(objective="supervised"), "needs `labels=`"),
  (dict(batch_size=100), r"inputs\[0\] has 64 examples"),
  (dict(key=None), "explicit PRNG"),
  (dict(exclude=".*"), "every leaf is excluded"),
])
def test_bad_options_raise(kwargs, match):
  pre, tvs, heads, xs = _mlp_problem()
  kw = dict(logits_fn=_logits_fn, inputs=xs, heads=heads, key=jax.random.key(0), steps=1)
  kw.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    M.adamerging_fit(pre, task_vectors=tvs, **kw)


def test_shape_mismatch_names_the_leaf():
  pre, tvs, heads, xs = _mlp_problem()
  bad = A.stack_task_vectors(tvs)
  bad["l2"]["bias"] = bad["l2"]["bias"][:, :3]
  with pytest.raises(ValueError, match="l2/bias"):
    M.adamerging_fit(pre, stacked_task_vectors=bad, logits_fn=_logits_fn, inputs=xs,
                     heads=heads, key=jax.random.key(0), steps=1)
  with pytest.raises(ValueError, match="2 input arrays for 3 task vectors"):
    M.adamerging_fit(pre, task_vectors=tvs, logits_fn=_logits_fn, inputs=xs[:2], heads=heads,
                     key=jax.random.key(0), steps=1)
