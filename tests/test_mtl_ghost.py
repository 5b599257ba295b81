"""The ghost Gramian mode (`mtl.jacobian="ghost"`, `jaxmtl.mtl.ghost`): per-task Gramians and
updates of dense layers from their inputs and output cotangents, equal to the Jacobian's."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmtl import tasks as tasks_lib
from jaxmtl.models import ModelConfig, abstract_model, make_model
from jaxmtl.mtl import ghost
from jaxmtl.mtl.aggregators import base as agg_base
from jaxmtl.mup import Parametrization
from jaxmtl.train.combine import MTLConfig, make_mtl, split_heads
from jaxmtl.train.step import make_features_fns, make_loss_fn
from tests.helpers import tiny_config
from tests.test_sharding import _run_steps


def _explicit_gramian(x, d, m, bias):
  """Weight gradients m·xᵀδ_t and bias gradients 1ᵀδ_t flattened, then J Jᵀ (float64)."""
  x, d = np.asarray(x, np.float64), np.asarray(d, np.float64)
  rows = [np.concatenate([(m * x.T @ dt).ravel()] + ([dt.sum(0)] if bias else [])) for dt in d]
  j = np.stack(rows)
  return j @ j.T


@pytest.mark.parametrize("method", ["ghost", "direct", "auto"])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_gramian_matches_explicit_weight_gradients(method, bias):
  kx, kd = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (6, 5))            # N=6 rows, fan-in 5
  d = jax.random.normal(kd, (3, 6, 4))         # T=3 tasks, fan-out 4
  g = ghost.layer_gramian(ghost.Tap(x, d, 0.5, bias), method)
  np.testing.assert_allclose(g, _explicit_gramian(x, d, 0.5, bias), rtol=1e-5, atol=1e-5)
  assert g.dtype == jnp.float32


def test_layer_update_is_weighted_gradient():
  kx, kd, kw = jax.random.split(jax.random.key(1), 3)
  x, d = jax.random.normal(kx, (7, 3)), jax.random.normal(kd, (4, 7, 2))
  w = jax.random.uniform(kw, (4,))
  dk, db = ghost.layer_update(ghost.Tap(x, d, 2.0, True), w, jnp.float32, jnp.float32)
  np.testing.assert_allclose(dk, sum(w[t] * 2.0 * x.T @ d[t] for t in range(4)), rtol=1e-5)
  np.testing.assert_allclose(db, sum(w[t] * d[t].sum(0) for t in range(4)), rtol=1e-5)


def test_ghost_cheaper_follows_the_shapes():
  assert ghost.ghost_cheaper(256, 1024, 1024, 10)          # batch below fan-in
  assert not ghost.ghost_cheaper(8192, 64, 64, 10)         # many rows through a small layer


def test_bad_taps_are_errors():
  with pytest.raises(ValueError, match="deltas"):
    ghost.layer_gramian(ghost.Tap(jnp.ones((3, 2)), jnp.ones((2, 4, 5)), 1.0, True))
  with pytest.raises(ValueError, match="method"):
    ghost.layer_gramian(ghost.Tap(jnp.ones((3, 2)), jnp.ones((2, 3, 5)), 1.0, True), "x")
  with pytest.raises(ValueError, match="at least one"):
    ghost.ghost_gramian([])


def _mlp_setup(mup: bool):
  tasks = tuple(tasks_lib.Task(f"t{i}", f"y{i}", 4) for i in range(3))
  spec = tasks_lib.DataSpec("synthetic", "x", (5,), None, tasks)
  cfg = ModelConfig(name="mlp", width=16, depth=3, activation="gelu", base_width=8)
  param = (Parametrization(name="mup", input_mult=2.0, zero_readout=False) if mup
           else Parametrization())
  outputs = {t.name: 4 for t in tasks}
  graphdef, _, _, _ = abstract_model(cfg, spec.input_shape, outputs, param)
  model = make_model(cfg, spec.input_shape, outputs, param, nnx.Rngs(3))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  k = jax.random.split(jax.random.key(2), 4)
  batch = {"x": jax.random.normal(k[0], (12, 5))}
  for i, t in enumerate(tasks):
    batch[t.label_key] = jax.random.randint(k[i + 1], (12,), 0, 4)
  return spec, graphdef, params, batch


@pytest.mark.parametrize("mup", [False, True], ids=["sp", "mup"])
@pytest.mark.parametrize("over", [{"aggregator": "upgrad"}, {"aggregator": "mgda"},
                                  {"aggregator": "pcgrad"}, {"weighting": "gradnorm"}],
                         ids=lambda o: next(iter(o.values())))
def test_ghost_update_equals_full_jacobian(mup, over):
  """Same weights and update as the stored Jacobian; μP multipliers included."""
  spec, graphdef, params, batch = _mlp_setup(mup)
  fns = make_features_fns(graphdef, spec)
  loss_fn = make_loss_fn(graphdef, spec)
  outs = {}
  for jac in ("full", "ghost"):
    mtl = make_mtl(MTLConfig(jacobian=jac, **over), 3, loss_fn, fns)
    outs[jac] = jax.jit(mtl.grads)(params, batch, mtl.init(params), 0, jax.random.key(0))
  (g_full, l_full, w_full, _, _), (g_ghost, l_ghost, w_ghost, _, _) = outs["full"], outs["ghost"]
  np.testing.assert_allclose(l_ghost, l_full, rtol=1e-6)
  np.testing.assert_allclose(w_ghost, w_full, rtol=2e-4, atol=1e-6)
  assert jax.tree.structure(g_ghost) == jax.tree.structure(g_full)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
               g_ghost, g_full)


def test_ghost_gramian_equals_jacobian_gramian():
  spec, graphdef, params, batch = _mlp_setup(True)
  fns = make_features_fns(graphdef, spec)
  from jaxmtl.mtl import jacobian as jac_lib
  from jaxmtl.train import combine
  _, jac, _ = jac_lib.task_jacobian(make_loss_fn(graphdef, spec), params, batch)
  want = agg_base.gramian(split_heads(jac)[0])
  cfg = MTLConfig(aggregator="upgrad", jacobian="ghost")
  _, _, g, _, _ = combine._ghost_rows(cfg, fns, params, batch, 3)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_ghost_trains_and_8_devices_equal_1(data_dir):
  cfg = tiny_config(data_dir, **{"mtl.aggregator": "upgrad", "mtl.jacobian": "ghost",
                                 "mesh.shape": (8, 1, 1)})
  one = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=(1, 1, 1)))
  l8, p8 = _run_steps(cfg, jax.devices(), 2)
  l1, p1 = _run_steps(one, jax.devices()[:1], 2)
  full = tiny_config(data_dir, **{"mtl.aggregator": "upgrad", "mtl.jacobian": "full"})
  lf, pf = _run_steps(full, jax.devices()[:1], 2)
  assert np.isfinite(l8).all()
  np.testing.assert_allclose(l8, l1, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(l1, lf, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), p8, p1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), p1, pf)


def test_ghost_config_errors(data_dir):
  from jaxmtl.config import ConfigError
  with pytest.raises(ConfigError, match="needs the full Jacobian"):
    tiny_config(data_dir, **{"mtl.aggregator": "graddrop", "mtl.jacobian": "ghost"})
  with pytest.raises(ConfigError, match="db_mtl"):
    tiny_config(data_dir, **{"mtl.weighting": "db_mtl", "mtl.jacobian": "ghost"})
  with pytest.raises(ConfigError, match="ghost"):
    tiny_config(data_dir, **{"mtl.aggregator": "upgrad", "mtl.jacobian": "ghost",
                             "mtl.mode": "features"})


def test_ghost_needs_a_tapped_model():
  """A model without taps (ViT) gets an error naming what to use instead."""
  tasks = (tasks_lib.Task("a", "ya", 3), tasks_lib.Task("b", "yb", 3))
  spec = tasks_lib.DataSpec("synthetic", "x", (8, 8, 1), None, tasks)
  cfg = ModelConfig(name="vit", width=16, depth=1, num_heads=2, patch_size=4)
  outputs = {t.name: 3 for t in tasks}
  graphdef, _, _, _ = abstract_model(cfg, spec.input_shape, outputs, Parametrization())
  model = make_model(cfg, spec.input_shape, outputs, Parametrization(), nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  batch = {"x": jnp.ones((4, 8, 8, 1)), "ya": jnp.zeros((4,), jnp.int32),
           "yb": jnp.zeros((4,), jnp.int32)}
  mtl = make_mtl(MTLConfig(aggregator="upgrad", jacobian="ghost"), 2,
                 make_loss_fn(graphdef, spec), make_features_fns(graphdef, spec))
  with pytest.raises(ValueError, match="jacobian='ghost' needs a model"):
    mtl.grads(params, batch, mtl.init(params), 0, jax.random.key(0))


def test_ghost_bfloat16_compute_matches_full_jacobian():
  """bf16 activations: the Gramian and update accumulate in f32 and return f32 parameters'
  gradients close to the full Jacobian's (both see the same bf16 forward)."""
  tasks = tuple(tasks_lib.Task(f"t{i}", f"y{i}", 4) for i in range(3))
  spec = tasks_lib.DataSpec("synthetic", "x", (5,), None, tasks)
  cfg = ModelConfig(name="mlp", width=16, depth=2, activation="relu", dtype="bfloat16")
  outputs = {t.name: 4 for t in tasks}
  graphdef, _, _, _ = abstract_model(cfg, spec.input_shape, outputs, Parametrization())
  model = make_model(cfg, spec.input_shape, outputs, Parametrization(), nnx.Rngs(1))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  _, _, _, batch = _mlp_setup(False)
  fns, loss_fn = make_features_fns(graphdef, spec), make_loss_fn(graphdef, spec)
  outs = {}
  for jac in ("full", "ghost"):
    mtl = make_mtl(MTLConfig(jacobian=jac, aggregator="upgrad"), 3, loss_fn, fns)
    outs[jac] = jax.jit(mtl.grads)(params, batch, mtl.init(params), 0, jax.random.key(0))[0]
  for a, b in zip(jax.tree.leaves(outs["ghost"]), jax.tree.leaves(outs["full"])):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3 * float(np.abs(b).max()) + 1e-6)


@pytest.mark.parametrize("rows", [{"unroll": False}, {"chunk_size": 2}], ids=["vmap", "lax_map"])
def test_ghost_rows_batched_like_accelerators(monkeypatch, rows):
  """GPU/TPU batch the T backward passes with vmap (CPU unrolls them): same Gramian/update."""
  from jaxmtl.train import combine
  spec, graphdef, params, batch = _mlp_setup(True)
  fns = make_features_fns(graphdef, spec)
  cfg = MTLConfig(aggregator="upgrad", jacobian="ghost")
  w = jnp.array([0.2, 0.5, 0.3])
  _, _, g_ref, upd_ref, _ = combine._ghost_rows(cfg, fns, params, batch, 3)
  monkeypatch.setattr(combine, "_rows", lambda cfg: rows)
  _, _, g, upd, _ = combine._ghost_rows(cfg, fns, params, batch, 3)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               upd(w), upd_ref(w))
