"""jaxmtl.train.combine: every MTL method's gradient against a direct computation.

A tiny pure-jnp two-layer model with three regression heads (no Flax, so each case compiles in
a fraction of a second) stands in for the train step's `loss_fn` / `features_fns`. References
are built from `jax.jacrev` and the aggregator / weighting called on the explicit Jacobian:
every Jacobian mode (full, chunked, Gramian-only), the representation-level mode, GradNorm,
DB-MTL, and 8 simulated data-parallel devices against 1.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmtl.mtl import aggregators as A
from jaxmtl.mtl import weighting as wt
from jaxmtl.train import combine as C

T, D_IN, D_H, B = 3, 4, 5, 16
KEY = jax.random.key(7)


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"enc": {"w": jax.random.normal(k[0], (D_IN, D_H)) / 2, "b": 0.1 * jnp.ones(D_H)},
          "heads": {"w": jax.random.normal(k[2], (D_H, T))}}  # column t: task t's head


def _batch():
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (B, D_IN))
  # Heterogeneous shards (rows 2 at a time per device) so local and global gradients differ.
  x = x + jnp.repeat(jnp.arange(8.0), B // 8)[:, None] * 0.3
  return {"x": x, "y": jax.random.normal(ky, (B, T)) + jnp.array([2.0, -1.0, 0.0])}


def _prepare(batch):
  return batch["x"], batch["y"]


def _encode(params, x):
  return jnp.tanh(x @ params["enc"]["w"] + params["enc"]["b"])


def _head_loss(params, z, y):
  preds = z @ params["heads"]["w"]                                              # [B, T]
  losses = jnp.mean((preds - y) ** 2, axis=0)                                   # global means
  return losses, {"sum_pred": jnp.sum(preds)}


def _task_head_loss(params, z, y, i):
  return jnp.mean((z @ params["heads"]["w"][:, i] - y[:, i]) ** 2)


def _loss_fn(params, batch):
  x, y = _prepare(batch)
  return _head_loss(params, _encode(params, x), y)


FEATURES = (_prepare, _encode, _head_loss, _task_head_loss)


def _method(**cfg):
  return C.make_mtl(C.MTLConfig(**cfg), T, _loss_fn, FEATURES, steps_per_epoch=4)


def _grads(method, params, batch, jit=False):
  state = method.init(params)
  fn = lambda p, b, s: method.grads(p, b, s, jnp.int32(0), KEY)
  return (jax.jit(fn) if jit else fn)(params, batch, state)


def _close(a, b, tol=2e-5):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


def _reference_params_mode(agg):
  params, batch = _params(), _batch()
  shared, heads = C.split_heads(params)
  jac = jax.jacrev(lambda s: _loss_fn({**s, "heads": heads}, batch)[0])(shared)
  state = agg.init(T) if agg.stateful else None
  update, _, _ = agg(jac, state=state, key=KEY)
  head_g = jax.grad(lambda h: jnp.sum(_loss_fn({**shared, "heads": h}, batch)[0]))(heads)
  return {**update, "heads": head_g}


def _reference_features_mode(agg):
  params, batch = _params(), _batch()
  shared, heads = C.split_heads(params)
  x, y = _prepare(batch)
  z, enc_vjp = jax.vjp(lambda s: _encode({**s, "heads": heads}, x), shared)
  jz = jax.jacrev(lambda zz: _head_loss(params, zz, y)[0])(z)                    # [T, B, d]
  state = agg.init(T) if agg.stateful else None
  z_cot, _, _ = agg(jz, state=state, key=KEY)
  head_g = jax.grad(lambda h: jnp.sum(_head_loss({**shared, "heads": h}, z, y)[0]))(heads)
  return {**enc_vjp(z_cot)[0], "heads": head_g}


# One of each kind: a QP on the Gramian (the other Gramian weightings share its code path), a
# randomised one (PCGrad, now also Gramian-only), a stateful one, the element-wise GradDrop and
# the default MGDA. Every aggregator runs through the real train step in test_mtl_train.py.
@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "nash_mtl", "graddrop", "mgda"])
def test_aggregator_modes_match_direct_computation(name):
  """full, chunked and Gramian-only Jacobians, and the features mode."""
  params, batch = _params(), _batch()
  ref = _reference_params_mode(A.make_aggregator(name))
  modes = [{"jacobian": "full"}]
  if name == "upgrad":  # chunking is aggregator-independent (lax.map over the same rows)
    modes.append({"jacobian": "chunked", "chunk_size": 2})
  if name != "graddrop":  # element-wise: not Gramian-expressible (config rejects it)
    modes.append({"jacobian": "gramian", "chunk_size": 2})
  for mode in modes:
    g, losses, weights, _, _ = _grads(_method(aggregator=name, **mode), params, batch)
    _close(g, ref)
    np.testing.assert_allclose(losses, _loss_fn(params, batch)[0], rtol=1e-6)
    assert weights.shape == (T,) and np.all(np.isfinite(weights)), mode
  g, _, _, _, _ = _grads(_method(aggregator=name, mode="features"), params, batch)
  _close(g, _reference_features_mode(A.make_aggregator(name)))
  if name == "upgrad":  # without an encoder/heads split: jacobian.task_jacobian of loss_fn
    plain = C.make_mtl(C.MTLConfig(aggregator=name), T, _loss_fn, None)
    _close(_grads(plain, params, batch)[0], ref)


def test_graddrop_needs_the_jacobian_and_weighting_modes_are_checked():
  with pytest.raises(ValueError, match="element-wise"):
    C.MTLConfig(aggregator="graddrop", jacobian="gramian")
  with pytest.raises(ValueError, match="db_mtl"):
    C.MTLConfig(weighting="db_mtl", jacobian="gramian")
  with pytest.raises(ValueError, match="features"):
    C.MTLConfig(weighting="uw", mode="features")
  with pytest.raises(ValueError, match="chunk_size"):
    C.MTLConfig(aggregator="upgrad", chunk_size=0)
  C.MTLConfig(aggregator="pcgrad", jacobian="gramian")  # PCGrad is a Gramian weighting
  with pytest.raises(ValueError, match="init\\(params\\)"):
    _method(weighting="db_mtl").init()


def test_nash_state_advances_in_every_mode():
  params, batch = _params(), _batch()
  for mode in ({"jacobian": "full"}, {"jacobian": "gramian"}, {"mode": "features"}):
    _, _, w, state, _ = _grads(_method(aggregator="nash_mtl", **mode), params, batch)
    assert int(state["agg"]["step"]) == 1 and np.all(np.asarray(w) > 0), mode


@pytest.mark.parametrize("mode", [{"jacobian": "full"}, {"jacobian": "chunked"},
                                  {"jacobian": "gramian", "chunk_size": 2},
                                  {"mode": "features"}])
def test_gradnorm_matches_direct_computation(mode):
  params, batch = _params(), _batch()
  shared, heads = C.split_heads(params)
  losses = _loss_fn(params, batch)[0]
  if mode.get("mode") == "features":
    x, y = _prepare(batch)
    target = jax.jacrev(lambda z: _head_loss(params, z, y)[0])(_encode(params, x))
    norms = jnp.sqrt(jnp.sum(target.reshape(T, -1) ** 2, axis=1))
  else:
    jac = jax.jacrev(lambda s: _loss_fn({**s, "heads": heads}, batch)[0])(shared)
    norms = jnp.sqrt(jnp.diag(A.gramian(jac)))
  gn = wt.gradnorm()
  ws = gn.init(T)
  (_, aux), gw = jax.value_and_grad(lambda wp: gn.update(losses, wp, ws.state, step=0,
                                                         grad_norms=norms), has_aux=True)(
      ws.params)
  model_g = jax.grad(lambda p: aux.weights @ _loss_fn(p, batch)[0])(params)
  method = _method(weighting="gradnorm", weighting_lr=0.1, **mode)
  g, _, weights, new, _ = _grads(method, params, batch)
  _close(g, model_g)
  np.testing.assert_allclose(weights, aux.weights, rtol=1e-6)
  # The logits took one Adam step on GradNorm's L_grad gradient: lr * sign(grad).
  step = np.asarray(ws.params["logits"] - new["w"].params["logits"])
  np.testing.assert_allclose(step, 0.1 * np.sign(gw["logits"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("jacobian", ["full", "chunked"])
def test_db_mtl_matches_direct_computation(jacobian):
  params, batch = _params(), _batch()
  shared, heads = C.split_heads(params)
  losses = _loss_fn(params, batch)[0]
  jac = jax.jacrev(lambda s: _loss_fn({**s, "heads": heads}, batch)[0])(shared)
  d = wt.db_mtl()
  ref_update, ref_aux = d.update(jac, losses, d.init(jac))
  ref_heads = jax.grad(lambda h: wt.db_mtl_log_losses(
      _loss_fn({**shared, "heads": h}, batch)[0]))(heads)
  method = _method(weighting="db_mtl", jacobian=jacobian, chunk_size=2)
  g, _, weights, state, _ = _grads(method, params, batch)
  _close(g, {**ref_update, "heads": ref_heads})
  np.testing.assert_allclose(weights, ref_aux.weights, rtol=1e-5)
  _close(state["db"]["buffer"], ref_aux.state["buffer"])


@pytest.mark.parametrize("cfg", [
    {"aggregator": "mgda", "mode": "features"}, {"weighting": "gradnorm"},
    {"weighting": "db_mtl"}], ids=lambda c: "-".join(c.values()))
def test_8_data_parallel_devices_equal_1(cfg):
  """Per-task gradients of the global-batch losses: the sharded step equals the unsharded
  (tests/test_mtl_train.py checks the parameter-level Jacobian and Gramian modes through the
  real train step)."""
  assert jax.device_count() == 8
  params, batch = _params(), _batch()
  method = _method(**cfg)
  one = _grads(method, params, batch, jit=True)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  assert len(sharded["x"].sharding.device_set) == 8
  eight = _grads(method, jax.device_put(params, NamedSharding(mesh, P())), sharded, jit=True)
  _close(eight[0], one[0], tol=1e-4)
  np.testing.assert_allclose(eight[2], one[2], rtol=1e-4, atol=1e-6)
