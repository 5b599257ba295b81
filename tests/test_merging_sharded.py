"""Merging sharded pytrees on a mesh of 8 simulated devices: same values, shardings kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxmtl.merging as M


@pytest.fixture(scope="module")
def setup():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices; see tests/conftest.py")
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
  r = np.random.default_rng(0)
  shapes = {"embed": (64, 16), "blocks": {"0": {"kernel": (16, 32), "bias": (32,)}},
            "head": (8, 3)}
  spec = {"embed": P("fsdp"), "blocks": {"0": {"kernel": P("fsdp"), "bias": P("fsdp")}},
          "head": P("fsdp")}
  mk = lambda: jax.tree.map(lambda s: r.normal(size=s).astype(np.float32), shapes,
                            is_leaf=lambda x: isinstance(x, tuple))
  pre = mk()
  fts = [jax.tree.map(lambda a: a + 0.1 * r.normal(size=a.shape).astype(np.float32), pre)
         for _ in range(4)]
  shard = jax.tree.map(lambda s: NamedSharding(mesh, s), spec)
  put = lambda t: jax.tree.map(jax.device_put, t, shard)
  return pre, fts, put(pre), [put(f) for f in fts], shard


def _check(out, ref, shard):
  for o, r, s in zip(jax.tree.leaves(out), jax.tree.leaves(ref), jax.tree.leaves(shard)):
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-6, atol=1e-6)
    assert o.sharding.is_equivalent_to(s, o.ndim), (o.sharding, s)
    assert len({sh.device for sh in o.addressable_shards}) == 8
    assert o.addressable_shards[0].data.shape[0] == o.shape[0] // 8  # not gathered


@pytest.mark.parametrize("method,opts", [
  ("task_arithmetic", {"scaling": 0.3}),
  ("ties", {"density": 0.2}),  # global top-k over sharded leaves
])
def test_jitted_merge_keeps_sharding(setup, method, opts):
  pre, fts, pre_s, fts_s, shard = setup
  fn = getattr(M, method)
  ref = fn(pre, fts, **opts)
  merged = jax.jit(lambda p, f: fn(p, f, **opts), out_shardings=shard)(pre_s, fts_s)
  _check(merged, ref, shard)
  # Without out_shardings the compiler's propagated output sharding must match as well.
  merged = jax.jit(lambda p, f: fn(p, f, **opts))(pre_s, fts_s)
  _check(merged, ref, shard)
