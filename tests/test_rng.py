"""The counter-based hash uniforms behind GradDrop's per-parameter draws (jaxmtl/rng.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmtl.rng import _triple32, hash_uniform

KEY = jax.random.key(42)
N = 1 << 20


def test_triple32_matches_the_published_reference_values():
  # Wellons' triple32 (nullprogram.com/blog/2018/07/31) evaluated by hand in Python integers.
  def ref(x):
    m = 0xFFFFFFFF
    x ^= x >> 17; x = (x * 0xED5AD4BB) & m
    x ^= x >> 11; x = (x * 0xAC4C1B51) & m
    x ^= x >> 15; x = (x * 0x31848BAB) & m
    return x ^ (x >> 14)
  xs = np.array([0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF], np.uint32)
  np.testing.assert_array_equal(np.asarray(_triple32(jnp.asarray(xs))),
                                np.array([ref(int(x)) for x in xs], np.uint32))


def test_uniform_moments_and_ks_statistic():
  u = np.asarray(hash_uniform(KEY, (N,)), np.float64)
  assert u.min() >= 0.0 and u.max() < 1.0
  se = 1.0 / np.sqrt(N)
  assert abs(u.mean() - 0.5) < 5 * se * np.sqrt(1 / 12)
  assert abs(u.var() - 1 / 12) < 5 * se * np.sqrt(1 / 180)  # var of (U - 1/2)^2 is 1/180
  assert stats.kstest(u, "uniform").statistic < 1.63 / np.sqrt(N)  # KS at the 1% level
  counts = np.bincount((u * 256).astype(int), minlength=256)
  assert stats.chisquare(counts).pvalue > 1e-3


def test_neighbouring_counters_and_keys_are_uncorrelated():
  u = np.asarray(hash_uniform(KEY, (N,)), np.float64)
  v = np.asarray(hash_uniform(jax.random.fold_in(KEY, 1), (N,)), np.float64)
  w = np.asarray(hash_uniform(jax.random.fold_in(KEY, 2), (N,)), np.float64)
  bound = 5 / np.sqrt(N)
  for lag in (1, 2, 1024):
    assert abs(np.corrcoef(u[:-lag], u[lag:])[0, 1]) < bound, lag
  assert abs(np.corrcoef(u, v)[0, 1]) < bound and abs(np.corrcoef(v, w)[0, 1]) < bound
  # Bernoulli masks from two keys agree as often as independent ones would (P = 1/2).
  agree = np.mean((u < 0.5) == (v < 0.5))
  assert abs(agree - 0.5) < 5 * 0.5 / np.sqrt(N)


def test_deterministic_shaped_and_dtype():
  a = hash_uniform(KEY, (3, 5, 7))
  np.testing.assert_array_equal(a, hash_uniform(KEY, (3, 5, 7)))
  # one counter per flat index: the same draws whatever the shape
  np.testing.assert_array_equal(np.asarray(a).ravel(), hash_uniform(KEY, (105,)))
  assert hash_uniform(KEY, (4,), jnp.bfloat16).dtype == jnp.bfloat16
  assert hash_uniform(KEY, (0, 3)).shape == (0, 3)
  assert not np.array_equal(a, hash_uniform(jax.random.fold_in(KEY, 1), (3, 5, 7)))
  jitted = jax.jit(hash_uniform, static_argnums=1)
  np.testing.assert_array_equal(jitted(KEY, (3, 5, 7)), a)


def test_too_many_elements_is_a_clear_error():
  with pytest.raises(ValueError, match="too large"):
    hash_uniform(KEY, (1 << 16, 1 << 16, 2))


def test_sharded_draws_and_graddrop_equal_unsharded():
  # The counter is an iota: under SPMD each device computes its own slice of the same stream.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from jaxmtl.mtl import aggregators as A
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  spec = NamedSharding(mesh, P("data", "model"))
  draw = jax.jit(lambda k: hash_uniform(k, (64, 48)), out_shardings=spec)
  np.testing.assert_array_equal(draw(KEY), hash_uniform(KEY, (64, 48)))
  j = jax.random.normal(jax.random.key(1), (3, 64, 48))
  js = jax.device_put(j, NamedSharding(mesh, P(None, "data", "model")))
  gd = jax.jit(lambda j, k: A.GradDrop()(j, key=k)[0], out_shardings=spec)
  np.testing.assert_allclose(gd(js, KEY), A.GradDrop()(j, key=KEY)[0], atol=1e-6)
  assert gd(js, KEY).sharding.is_equivalent_to(spec, 2)
