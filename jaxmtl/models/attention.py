"""Multi-head self-attention (GQA, causal or bidirectional) and the pre-norm block."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl.models.config import ModelConfig
from jaxmtl.models.layers import Dense, Norm, activation
from jaxmtl.mup import Parametrization


def rope(x_BxLxNxH: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al., arXiv 2104.09864), half-split convention."""
  h = x_BxLxNxH.shape[-1]
  freq = base ** (-jnp.arange(0, h // 2, dtype=jnp.float32) * 2 / h)
  ang_LxH2 = positions_L[:, None].astype(jnp.float32) * freq[None, :]
  sin, cos = jnp.sin(ang_LxH2)[None, :, None, :], jnp.cos(ang_LxH2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


class Attention(nnx.Module):
  """Self-attention with q/k/v/o projections (role "hidden"), μP logit scale."""

  def __init__(self, cfg: ModelConfig, *, param: Parametrization, rngs: nnx.Rngs,
               causal: bool, use_rope: bool):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    d, bd, n, k = cfg.width, cfg.base, cfg.num_heads, cfg.kv_heads
    h, bh = cfg.head_dim, cfg.base // cfg.num_heads
    common = dict(role="hidden", param=param, rngs=rngs, dtype=dt, param_dtype=pdt,
                  depth=cfg.depth, use_bias=False)
    self.query = Dense(d, n * h, axes=("embed", "heads"), base_in=bd, base_out=n * bh,
                       query=True, **common)
    self.key = Dense(d, k * h, axes=("embed", "heads"), base_in=bd, base_out=k * bh, **common)
    self.value = Dense(d, k * h, axes=("embed", "heads"), base_in=bd, base_out=k * bh, **common)
    self.out = Dense(n * h, d, axes=("heads", "embed"), base_in=n * bh, base_out=bd, **common)
    self.scale = param.attention_scale(h, bh)
    self.n, self.k, self.h = n, k, h
    self.causal, self.use_rope = causal, use_rope
    self.implementation = None if cfg.attention == "auto" else cfg.attention

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    b, l, _ = x_BxLxD.shape
    q = self.query(x_BxLxD).reshape(b, l, self.n, self.h)
    kk = self.key(x_BxLxD).reshape(b, l, self.k, self.h)
    v = self.value(x_BxLxD).reshape(b, l, self.k, self.h)
    if self.use_rope:
      pos = jnp.arange(l)
      q, kk = rope(q, pos), rope(kk, pos)
    o = jax.nn.dot_product_attention(q, kk, v, scale=self.scale, is_causal=self.causal,
                                     implementation=self.implementation)
    return self.out(o.reshape(b, l, self.n * self.h))


class MlpBlock(nnx.Module):
  """Dense -> act -> Dense, or SwiGLU-style gated (Shazeer, arXiv 2002.05202) when glu."""

  def __init__(self, cfg: ModelConfig, *, param: Parametrization, rngs: nnx.Rngs):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    d, bd = cfg.width, cfg.base
    f, bf = cfg.hidden, int(cfg.base * cfg.mlp_ratio)
    common = dict(role="hidden", param=param, rngs=rngs, dtype=dt, param_dtype=pdt,
                  depth=cfg.depth)
    self.up = Dense(d, f, axes=("embed", "mlp"), base_in=bd, base_out=bf, **common)
    self.gate = Dense(d, f, axes=("embed", "mlp"), base_in=bd, base_out=bf, **common) if cfg.glu else None
    self.down = Dense(f, d, axes=("mlp", "embed"), base_in=bf, base_out=bd, **common)
    self.act = activation(cfg.activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.act(self.up(x))
    if self.gate is not None:
      h = h * self.gate(x)
    return self.down(h)


class Block(nnx.Module):
  """Pre-norm residual block: x + m*attn(norm(x)); x + m*mlp(norm(x)).

  m is the depth-μP branch multiplier (1 unless the parametrization is depth_mup).
  """

  def __init__(self, cfg: ModelConfig, *, param: Parametrization, rngs: nnx.Rngs,
               causal: bool, use_rope: bool):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = dict(kind=cfg.norm, param=param, base_features=cfg.base, rngs=rngs, dtype=dt,
                param_dtype=pdt, depth=cfg.depth)
    self.norm1 = Norm(cfg.width, **norm)
    self.attn = Attention(cfg, param=param, rngs=rngs, causal=causal, use_rope=use_rope)
    self.norm2 = Norm(cfg.width, **norm)
    self.mlp = MlpBlock(cfg, param=param, rngs=rngs)
    self.branch = param.branch_multiplier(cfg.depth)

  def __call__(self, x: jax.Array) -> jax.Array:
    m = jnp.asarray(self.branch, x.dtype)
    x = x + m * self.attn(self.norm1(x))
    return x + m * self.mlp(self.norm2(x))


def run_blocks(blocks: Any, x: jax.Array, remat: bool, sow=None) -> jax.Array:
  for i, block in enumerate(blocks):
    x = nnx.remat(lambda b, y: b(y))(block, x) if remat else block(x)
    if sow is not None:
      sow(f"block_{i}", x)
  return x
