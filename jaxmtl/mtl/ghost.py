"""Per-task Gramians of dense layers from their inputs and output cotangents ("ghost" Gramian).

For a dense layer ``y = m · (x @ k) + b`` applied to ``N`` rows ``x [N, I]`` (batch, or batch ×
tokens), task ``t``'s gradients are ``∇_k L_t = m · xᵀ δ_t`` and ``∇_b L_t = 1ᵀ δ_t``, where
``δ_t = ∂L_t/∂y [N, O]`` is the layer's output cotangent. Their Gramian needs neither the
``T`` weight gradients nor a Jacobian:

    <∇_k L_s, ∇_k L_t> = m² · tr(δ_sᵀ x xᵀ δ_t) = m² · <δ_s, K δ_t>,   K = x xᵀ  [N, N],

the per-example-gradient-norm trick of Goodfellow, "Efficient Per-Example Gradient
Computations" (arXiv 1510.01799), generalised to pairs of tasks as in "ghost clipping" (Li et
al., arXiv 2110.05679; Bu et al.'s mixed per-layer choice, arXiv 2205.10683). Per layer the
cheaper of the two ways is taken from the shapes: ghost costs ``N²·I + T·N²·O`` multiply-adds,
the direct way (form the ``T`` weight gradients, then their dot products) ``T·N·I·O +
T²·I·O / 2``; ghost wins when ``N`` is below the layer's fan-in (a batch of 256 rows through a
1024-wide layer: about 4× fewer).

With task weights ``w`` from an aggregator, the shared parameters' update ``Jᵀ w`` is then one
weight-gradient product per layer, ``m · xᵀ (Σ_t w_t δ_t)``: no further backward pass.

Everything is accumulated in float32 at HIGHEST matmul precision. Under data parallelism ``x``
and ``δ`` hold the global batch (the losses are global means), so ``K`` and the Gramian are the
globally reduced ones.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

__all__ = ["Tap", "layer_gramian", "ghost_gramian", "layer_update", "ghost_cheaper"]

_HI = jax.lax.Precision.HIGHEST


class Tap(NamedTuple):
  """What a dense layer records for the ghost Gramian.

  x: its input rows ``[N, I]``; deltas: the output cotangents of the T tasks ``[T, N, O]``;
  multiplier: the forward multiplier ``m`` (μP); has_bias: whether the layer has a bias.
  """
  x: jax.Array
  deltas: jax.Array
  multiplier: float
  has_bias: bool


def ghost_cheaper(n: int, fan_in: int, fan_out: int, tasks: int) -> bool:
  """Whether ``K = x xᵀ`` beats forming the T weight gradients for this layer shape."""
  ghost = n * n * fan_in + tasks * n * n * fan_out
  direct = tasks * n * fan_in * fan_out + tasks * tasks * fan_in * fan_out // 2
  return ghost < direct


def _f32(x):
  return x.astype(jnp.float32)


def layer_gramian(tap: Tap, method: str = "auto") -> jax.Array:
  """f32[T, T] Gramian of one dense layer's per-task gradients (kernel and bias).

  Args:
    tap: the layer's input rows, task cotangents, multiplier and bias flag.
    method: "ghost" (via ``K = x xᵀ``), "direct" (via the weight gradients) or "auto"
      (:func:`ghost_cheaper`).
  """
  x, d = _f32(tap.x), _f32(tap.deltas)
  if x.ndim != 2 or d.ndim != 3 or d.shape[1] != x.shape[0]:
    raise ValueError(f"tap needs x [N, I] and deltas [T, N, O]; got {x.shape}, {d.shape}")
  t_n, n, o = d.shape
  if method == "auto":
    method = "ghost" if ghost_cheaper(n, x.shape[1], o, t_n) else "direct"
  if method == "ghost":
    k = jnp.dot(x, x.T, precision=_HI)                                  # [N, N]
    dn = d.transpose(1, 0, 2)                                             # [N, T, O]
    kd = jnp.dot(k, dn.reshape(n, t_n * o), precision=_HI).reshape(n, t_n, o)   # K δ_t
    g = jnp.einsum("nso,nto->st", dn, kd, precision=_HI)
  elif method == "direct":
    w = jnp.einsum("ni,tno->tio", x, d, precision=_HI).reshape(t_n, -1)
    g = jnp.dot(w, w.T, precision=_HI)
  else:
    raise ValueError(f"method must be 'auto', 'ghost' or 'direct', got {method!r}")
  g = g * jnp.float32(tap.multiplier) ** 2
  if tap.has_bias:
    s = jnp.sum(d, axis=1)                                                # [T, O]
    g = g + jnp.dot(s, s.T, precision=_HI)
  return g


def ghost_gramian(taps: Sequence[Tap], method: str = "auto") -> jax.Array:
  """Symmetric f32[T, T] Gramian of the per-task gradients of all the layers' parameters."""
  if not taps:
    raise ValueError("ghost_gramian needs at least one tapped layer")
  g = sum(layer_gramian(t, method) for t in taps)
  return 0.5 * (g + g.T)


def layer_update(tap: Tap, weights: jax.Array, kernel_dtype, bias_dtype=None):
  """``(Σ_t w_t ∇_k L_t [I, O], Σ_t w_t ∇_b L_t [O] or None)`` from the stored cotangents."""
  c = jnp.tensordot(_f32(weights), _f32(tap.deltas), axes=1)            # [N, O]
  dk = jnp.float32(tap.multiplier) * jnp.dot(_f32(tap.x).T, c, precision=_HI)
  db = jnp.sum(c, axis=0).astype(bias_dtype) if tap.has_bias else None
  return dk.astype(kernel_dtype), db
