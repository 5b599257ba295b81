"""Layers whose parameters carry their μP role and logical axes.

Every `nnx.Param` created here has two metadata entries:
  * `axes`: logical axis names, one per dimension (mapped to the mesh by
    `jaxmtl.mesh`), e.g. ("embed", "mlp");
  * `mup`: the `jaxmtl.mup.ParamRule` (init std, forward multiplier, optimizer
    multipliers) given by the model's parametrization and base shapes.

`param_metadata(model)` extracts both as pytrees with the same structure as
the parameters (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`).

Kernels are (in, out) as in Flax; compute happens in `dtype` (e.g. bf16),
parameters are stored in `param_dtype` (f32 by default).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl.mup import Parametrization, ParamRule


def _param(rngs: nnx.Rngs, shape: Sequence[int], rule: ParamRule, axes: tuple, dtype,
           mean: float = 0.0) -> nnx.Param:
  if rule.init_std > 0:
    value = rule.init_std * jax.random.normal(rngs.params(), tuple(shape), dtype)
  else:
    value = jnp.zeros(tuple(shape), dtype)
  if mean:
    value = value + jnp.asarray(mean, dtype)
  return nnx.Param(value, axes=tuple(axes), mup=rule)


class Dense(nnx.Module):
  """y = multiplier * (x @ kernel) + bias, with kernel [in, out]."""

  def __init__(self, in_features: int, out_features: int, *, role: str, axes: tuple[str, str],
               param: Parametrization, base_in: int, base_out: int, rngs: nnx.Rngs,
               use_bias: bool = True, query: bool = False, depth: int | None = None,
               zero_init: bool = False, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    rule = param.rule(role, in_features, out_features, base_in, base_out, query=query,
                      depth=depth)
    if zero_init:
      rule = ParamRule(rule.role, 0.0, rule.multiplier, rule.lr_scale, rule.eps_scale,
                       rule.wd_scale)
    self.kernel = _param(rngs, (in_features, out_features), rule, axes, param_dtype)
    self.multiplier = float(rule.multiplier)
    brule = param.rule("vector", 1, out_features, 1, base_out, depth=depth)
    self.bias = (_param(rngs, (out_features,), brule, (axes[1],), param_dtype)
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x_BxI: jax.Array) -> jax.Array:
    k = self.kernel[...].astype(self.dtype)
    y = jnp.dot(x_BxI.astype(self.dtype), k)
    if self.multiplier != 1.0:
      y = y * jnp.asarray(self.multiplier, self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table [vocab, d] (μP role "input")."""

  def __init__(self, vocab: int, features: int, *, param: Parametrization, base_features: int,
               rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               axes: tuple[str, str] = ("vocab", "embed")):
    rule = param.rule("input", vocab, features, vocab, base_features)
    self.embedding = _param(rngs, (vocab, features), rule, axes, param_dtype)
    self.multiplier = float(rule.multiplier)
    self.dtype = dtype

  def __call__(self, ids_BxL: jax.Array) -> jax.Array:
    x = jnp.take(self.embedding[...], ids_BxL, axis=0).astype(self.dtype)
    return x * jnp.asarray(self.multiplier, self.dtype) if self.multiplier != 1.0 else x


class Norm(nnx.Module):
  """LayerNorm or RMSNorm with a gain (and a bias for LayerNorm), role "vector"."""

  def __init__(self, features: int, *, kind: str, param: Parametrization, base_features: int,
               rngs: nnx.Rngs, depth: int | None = None, eps: float = 1e-6,
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    if kind not in ("layernorm", "rmsnorm"):
      raise ValueError(f"invalid norm {kind!r}; valid choices: layernorm, rmsnorm")
    rule = param.rule("vector", 1, features, 1, base_features, depth=depth)
    self.scale = _param(rngs, (features,), rule, ("embed",), param_dtype, mean=1.0)
    self.bias = _param(rngs, (features,), rule, ("embed",), param_dtype) if kind == "layernorm" else None
    self.kind, self.eps, self.dtype = kind, eps, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    if self.kind == "layernorm":
      xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + self.eps)
    y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(self.dtype)


ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu, "tanh": jnp.tanh}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"invalid activation {name!r}; valid choices: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def param_metadata(model: nnx.Module) -> tuple[Any, Any]:
  """(axes tree, rules tree), each with the structure of the pure param dict."""
  state = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(state)
  axes, rules = {}, {}
  for path, var in flat:
    meta = var.get_metadata()
    for tree, key in ((axes, "axes"), (rules, "mup")):
      node = tree
      for p in path[:-1]:
        node = node.setdefault(p, {})
      if key not in meta:
        raise ValueError(f"parameter {'/'.join(map(str, path))} has no {key!r} metadata; "
                         "create parameters with jaxmtl.models.layers")
      node[path[-1]] = meta[key]
  return axes, rules
