"""Tests for jaxmtl.mtl.jacobian: Jacobian vs jacrev, chunking, Gramian-only mode, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmtl.mtl import jacobian as jm


def _mlp_params(key, d_in=5, d_h=8, tasks=3):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "enc": {"w": jax.random.normal(k1, (d_in, d_h)) / np.sqrt(d_in), "b": jnp.zeros(d_h)},
    "heads": jax.random.normal(k2, (tasks, d_h)) / np.sqrt(d_h),
    "scale": jax.random.normal(k3, ()),
  }


def _loss_fn(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["enc"]["w"] + params["enc"]["b"])
  preds = h @ params["heads"].T * (1.0 + 0.1 * params["scale"])  # [B, T]
  losses = jnp.mean((preds - y) ** 2, axis=0)  # global per-task mean, [T]
  return losses, {"mean_pred": preds.mean()}


def _data(key, n=16, d_in=5, tasks=3):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (n, d_in)), jax.random.normal(ky, (n, tasks))


def _close(a, b, tol=1e-5):
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol),
                         a, b)


def test_jacobian_matches_jacrev_and_chunking():
  params, batch = _mlp_params(jax.random.key(0)), _data(jax.random.key(1))
  losses, jac, aux = jax.jit(lambda p, b: jm.task_jacobian(_loss_fn, p, b))(params, batch)
  ref = jax.jit(jax.jacrev(lambda p: _loss_fn(p, batch)[0]))(params)
  _close(jac, ref)
  np.testing.assert_allclose(losses, _loss_fn(params, batch)[0], rtol=1e-6)
  assert set(aux) == {"mean_pred"}
  assert jac["enc"]["w"].shape == (3, 5, 8) and jac["scale"].shape == (3,)
  for c in (1, 2):
    _, jac_c, _ = jax.jit(lambda p, b, c=c: jm.task_jacobian(_loss_fn, p, b, chunk_size=c))(
      params, batch)
    _close(jac_c, jac)
  _, jac_u, _ = jax.jit(lambda p, b: jm.task_jacobian(_loss_fn, p, b, unroll=True))(params, batch)
  _close(jac_u, jac)


def test_gramian_only_equals_jjt_and_combine():
  params, batch = _mlp_params(jax.random.key(2)), _data(jax.random.key(3))
  _, jac, _ = jm.task_jacobian(_loss_fn, params, batch)
  flat = np.concatenate([np.asarray(l).reshape(3, -1) for l in jax.tree_util.tree_leaves(jac)],
                        axis=1).astype(np.float64)
  np.testing.assert_allclose(jm.gramian_of(jac), flat @ flat.T, rtol=1e-5, atol=1e-6)
  w = jnp.array([0.2, 0.5, 0.3])
  for c in (1, 2):
    losses, gram, _ = jax.jit(
      lambda p, b, c=c: jm.task_gramian(_loss_fn, p, b, chunk_size=c))(params, batch)
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gram, gram.T)

  @jax.jit
  def upd(p, b, w):
    _, _, _, combine = jm.task_gramian(_loss_fn, p, b, return_combine=True)
    return combine(w)

  _close(upd(params, batch, w), jm.combine(w, jac))


def test_feature_jacobian_and_encoder_backward():
  params, (x, y) = _mlp_params(jax.random.key(4)), _data(jax.random.key(5))

  def encoder(p, x):
    return jnp.tanh(x @ p["w"] + p["b"])

  def heads_loss(z, heads, y):
    return jnp.mean((z @ heads.T - y) ** 2, axis=0), None

  feats, enc_vjp = jax.vjp(lambda p: encoder(p, x), params["enc"])
  losses, jz, _ = jm.feature_jacobian(heads_loss, feats, params["heads"], y)
  assert jz.shape == (3,) + feats.shape
  ref = jax.jacrev(lambda z: heads_loss(z, params["heads"], y)[0])(feats)
  np.testing.assert_allclose(jz, ref, rtol=1e-5, atol=1e-6)
  _, jz2, _ = jm.feature_jacobian(heads_loss, feats, params["heads"], y, chunk_size=2)
  np.testing.assert_allclose(jz2, jz, rtol=1e-6, atol=1e-7)
  w = jnp.array([1.0, 2.0, 0.5])
  (g_enc,) = enc_vjp(jm.combine(w, jz))
  ref_enc = jax.grad(lambda p: w @ heads_loss(encoder(p, x), params["heads"], y)[0])(
    params["enc"])
  _close(g_enc, ref_enc)


def test_bad_inputs():
  params, batch = _mlp_params(jax.random.key(0)), _data(jax.random.key(1))
  with pytest.raises(ValueError, match="chunk_size"):
    jm.task_jacobian(_loss_fn, params, batch, chunk_size=0)
  with pytest.raises(ValueError, match="chunk_size"):
    jm.task_gramian(_loss_fn, params, batch, chunk_size=-1)
  with pytest.raises(ValueError, match="num_tasks"):
    jm.task_jacobian(lambda p, b: (jnp.sum(p["scale"]), None), params, batch)


def _min_norm_2(gram):
  """Closed-form min-norm point of the convex hull of two gradients (MGDA, T=2)."""
  g11, g22, g12 = gram[0, 0], gram[1, 1], gram[0, 1]
  a = jnp.clip((g22 - g12) / (g11 + g22 - 2 * g12), 0.0, 1.0)
  return jnp.stack([a, 1 - a])


def test_sharded_gramian_is_global_not_average_of_local():
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  params = _mlp_params(jax.random.key(6), tasks=2)
  x, y = _data(jax.random.key(7), n=64, tasks=2)
  # Make shards heterogeneous so local gradients differ clearly from the global one.
  x = x + jnp.repeat(jnp.arange(8.0), 8)[:, None] * 0.3

  def step(p, x, y):
    losses, gram, _, combine = jm.task_gramian(_loss_fn, p, (x, y), return_combine=True)
    w = _min_norm_2(gram)
    return gram, w, combine(w)

  gram1, w1, upd1 = jax.jit(step)(params, x, y)
  shard = NamedSharding(mesh, P("data"))
  xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
  ps = jax.device_put(params, NamedSharding(mesh, P()))
  gram8, w8, upd8 = jax.jit(step)(ps, xs, ys)
  assert len(xs.sharding.device_set) == 8
  np.testing.assert_allclose(gram8, gram1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(w8, w1, rtol=1e-4, atol=1e-6)
  _close(upd8, upd1, tol=1e-4)
  # Averaging per-shard Gramians is a different (wrong) quantity.
  local_gram = jax.jit(jax.vmap(lambda xb, yb: jm.task_gramian(_loss_fn, params, (xb, yb))[1]))
  avg_local = jnp.mean(local_gram(x.reshape(8, 8, -1), y.reshape(8, 8, -1)), axis=0)
  assert not np.allclose(avg_local, gram1, rtol=1e-2)
  assert float(jnp.trace(avg_local)) > float(jnp.trace(gram1))  # Jensen: E‖g‖² ≥ ‖E g‖²
