"""Mesh, logical-axis rules, sharded init, and (2,2,2)-mesh == 1-device training."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxmtl import mesh as mesh_lib
from jaxmtl.data import pipeline
from jaxmtl.models import ModelConfig, abstract_model
from jaxmtl.mup import Parametrization
from jaxmtl.train import loop
from tests.helpers import tiny_config


def test_resolve_shape():
  assert mesh_lib.resolve_shape((-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="at most one"):
    mesh_lib.resolve_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="does not divide"):
    mesh_lib.resolve_shape((3, -1, 1), 8)


def _transformer_specs(strategy):
  cfg = ModelConfig(name="transformer", width=32, depth=1, num_heads=4, vocab_size=256)
  _, shapes, axes, _ = abstract_model(cfg, (16,), {"lm": 256}, Parametrization())
  mcfg = mesh_lib.MeshConfig(shape=(2, 2, 2), strategy=strategy, check_min_size=1024)
  mesh = mesh_lib.make_mesh(mcfg)
  sh = mesh_lib.tree_shardings(axes, shapes, mesh_lib.rules_for(mcfg), mesh)
  return mesh_lib.describe_shardings(sh), shapes, sh, mesh, mcfg


def test_specs_follow_rules_fsdp_tp():
  specs, *_ = _transformer_specs("fsdp_tp")
  assert specs["embed/embedding"] == str(P("tensor", "fsdp"))          # (vocab, embed)
  assert specs["blocks/0/attn/query/kernel"] == str(P("fsdp", "tensor"))  # (embed, heads)
  assert specs["blocks/0/attn/out/kernel"] == str(P("tensor", "fsdp"))    # (heads, embed)
  assert specs["blocks/0/mlp/up/kernel"] == str(P("fsdp", "tensor"))      # (embed, mlp)
  assert specs["blocks/0/mlp/down/kernel"] == str(P("tensor", "fsdp"))    # (mlp, embed)
  assert specs["heads/heads/lm/kernel"] == str(P("fsdp", "tensor"))       # (embed, vocab)
  assert specs["blocks/0/norm1/scale"] == str(P("fsdp"))


def test_specs_dp_replicated_and_shard_check():
  specs, shapes, sh, mesh, mcfg = _transformer_specs("dp")
  assert set(specs.values()) == {str(P())}
  specs, shapes, sh, mesh, mcfg = _transformer_specs("fsdp_tp")
  stats = mesh_lib.check_sufficiently_sharded(shapes, sh, mesh, mcfg)
  assert stats["ratio"] < 1.5
  # Pretend the strategy shards but every parameter is replicated: the check must fail.
  repl = jax.tree.map(lambda s: mesh_lib.replicated(mesh), sh)
  with pytest.raises(ValueError, match="not sufficiently sharded"):
    mesh_lib.check_sufficiently_sharded(shapes, repl, mesh, mcfg)


def test_state_created_sharded(data_dir):
  cfg = tiny_config(data_dir, **{"mesh.shape": (2, 2, 2), "mesh.strategy": "fsdp_tp",
                                 "model.width": 64})
  exp = loop.build(cfg)
  state = loop.init_state(exp)
  k = state.params["layers"][0]["kernel"]        # (input, mlp): mlp over tensor
  assert k.sharding.spec == P(None, "tensor")
  k1 = state.params["layers"][1]["kernel"]       # (mlp, embed)
  assert k1.sharding.spec == P("tensor", "fsdp")
  assert k1.addressable_shards[0].data.shape == (32, 32)
  mu = state.opt_state[0].mu["layers"][1]["kernel"] if hasattr(state.opt_state[0], "mu") else None
  leaves = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", ()) == (64, 64)]
  assert leaves and all(x.sharding.spec == P("tensor", "fsdp") for x in leaves)


def _run_steps(cfg, devices, n):
  exp = loop.build(cfg, devices)
  state = loop.init_state(exp)
  it = pipeline.train_iterator(exp.data, cfg.data.batch_size, exp.mesh)
  step = loop.compile_train_step(exp, it.element_spec)
  losses = []
  for _ in range(n):
    state, m = step(state, next(it))
    losses.append([float(m[f"loss/{t.name}"]) for t in exp.spec.tasks])
  return np.array(losses), jax.device_get(state.params)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_222_mesh_matches_one_device(data_dir, model):
  over = {"mesh.shape": (2, 2, 2), "mesh.strategy": "fsdp_tp"}
  if model == "transformer":
    over.update({"model.name": "transformer", "model.width": 32, "model.depth": 1,
                 "model.num_heads": 4, "data.name": "jaxmtl_bytes", "data.batch_size": 8})
  cfg = tiny_config(data_dir, **over)
  one = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=(1, 1, 1)))
  l8, p8 = _run_steps(cfg, jax.devices(), 3)
  l1, p1 = _run_steps(one, jax.devices()[:1], 3)
  np.testing.assert_allclose(l8, l1, rtol=2e-5, atol=2e-5)
  # Adam normalises tiny gradients, so reduction-order noise can reach ~1e-5 in a few entries.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), p8, p1)


def test_sharded_init_never_materialises_a_full_array_per_device(data_dir):
  """XLA's per-device memory for the jitted init: FSDP over 8 devices needs less temporary
  memory than one full copy of the parameters (a full array per device would need more)."""
  from jaxmtl.train import state as state_lib
  sizes = {}
  for shape, strategy in [((1, 1, 1), "dp"), ((1, 8, 1), "fsdp")]:
    cfg = tiny_config(data_dir, **{"model.width": 1024, "model.depth": 3, "mesh.shape": shape,
                                   "mesh.strategy": strategy, "mesh.min_shard_fraction": 1.0})
    exp = loop.build(cfg, jax.devices()[:int(np.prod(shape))])
    init = state_lib.make_init(exp.model_fn, exp.optimizer, exp.mtl.init, cfg.seed)
    with jax.set_mesh(exp.mesh):
      compiled = jax.jit(lambda: init(exp.shardings.params),
                         out_shardings=exp.shardings).lower().compile()
    mem = compiled.memory_analysis()
    sizes[strategy] = (mem.temp_size_in_bytes, mem.output_size_in_bytes)
    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(exp.abstract.params))
  assert sizes["fsdp"][0] < params_bytes / 1.5
  assert sizes["fsdp"][1] < sizes["dp"][1] / 3  # params + Adam moments, mostly sharded 8 ways
