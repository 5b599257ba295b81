"""Counter-based uniform draws from an integer hash: one uniform per parameter, cheaply.

GradDrop (arXiv 2010.06808) draws one uniform per shared parameter every step, DARE and DELLA
one per task-vector entry. With
`jax.random.uniform` (threefry-2x32, 20 rounds) that draw costs more than the GradDrop
arithmetic itself on CPU (measured 7-17 ms for 3.4M draws against 2.4 ms for the combination of
3 tasks; inside one fusion with the combination, 15-28 ms): XLA:CPU does not vectorise threefry
well. A counter-based generator in the sense of Salmon et al., "Parallel random numbers: as easy
as 1, 2, 3" (SC 2011) -- output = bijective mix(counter, seed) -- needs only a few integer
multiplies and shifts per element, which XLA fuses and vectorises (about 0.3 ms for the same
draws), and shards like `iota` under SPMD. (DARE on 8 x 100M entries: see docs/benchmarks.md.)

The mixer is Chris Wellons' `triple32` (the 32-bit integer hash with the lowest measured
avalanche bias in his hash-prospector search, bias ~0.021), applied twice with two 32-bit seeds
taken from the JAX key, so the stream depends on the whole key:
    u_k = (triple32(triple32(k + s0) ^ s1) >> 8) * 2**-24,   k = flat index in the array.
The result is uniform on the grid {0, 2**-24, ..., 1 - 2**-24} (`jax.random.uniform` float32
has 2**-23 resolution). It is a statistical, not a cryptographic, generator; tests check the
moments, a Kolmogorov-Smirnov statistic and the correlation of neighbouring draws and of
neighbouring keys.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MAX = 1 << 32


def _triple32(x: jax.Array) -> jax.Array:
  """Wellons' triple32 integer hash (bijective on uint32)."""
  x = x ^ (x >> 17)
  x = x * jnp.uint32(0xED5AD4BB)
  x = x ^ (x >> 11)
  x = x * jnp.uint32(0xAC4C1B51)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x31848BAB)
  return x ^ (x >> 14)


def hash_uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Uniform [0, 1) draws of `shape` from `key` (a typed JAX key), one per flat index.

  Deterministic in (key, shape); arrays of at most 2**32 elements (the counter is uint32).
  """
  shape = tuple(int(s) for s in shape)
  size = int(np.prod(shape, dtype=np.int64))
  if size > _MAX:
    raise ValueError(f"hash_uniform counts elements in uint32: an array of {size} elements "
                     f"(shape {shape}) is too large; split the leaf")
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
  h = _triple32(_triple32(counter + seeds[0]) ^ seeds[1])
  return ((h >> 8).astype(jnp.float32) * np.float32(2.0**-24)).astype(dtype)


# The generators behind the ``uniform=`` options of GradDrop, DARE and DELLA:
# name -> (key, shape, dtype) -> array. "jax" is `jax.random.uniform` with the configured PRNG
# implementation (threefry by default).
UNIFORMS = {"hash": hash_uniform, "jax": jax.random.uniform}


def uniform(kind: str, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Uniform [0, 1) draws from the generator named `kind` (a key of `UNIFORMS`)."""
  if kind not in UNIFORMS:
    raise ValueError(f"uniform must be one of {sorted(UNIFORMS)}, got {kind!r}")
  return UNIFORMS[kind](key, shape, dtype)
