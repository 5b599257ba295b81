"""Multi-layer perceptron with one head per task."""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl.models.config import ModelConfig
from jaxmtl.models.heads import TaskHeads
from jaxmtl.models.layers import Dense, activation
from jaxmtl.mup import Parametrization


class MLP(nnx.Module):
  """x [B, ...] -> flatten -> depth x (Dense, act) -> {task: logits [B, classes]}.

  Roles: the first Dense is "input" (finite fan-in), the rest "hidden", heads
  "output". `encode` returns the shared features (for representation-level MTL).
  """

  def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], outputs: Mapping[str, int],
               *, param: Parametrization, rngs: nnx.Rngs):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    d_in = math.prod(input_shape)
    w, bw = cfg.width, cfg.base
    self.layers = nnx.List([
        Dense(d_in if i == 0 else w, w, role="input" if i == 0 else "hidden",
              axes=(_in_axis(i), _out_axis(i)),
              param=param, base_in=d_in if i == 0 else bw, base_out=bw, rngs=rngs,
              dtype=dt, param_dtype=pdt)
        for i in range(cfg.depth)])
    last_axis = _out_axis(cfg.depth - 1)
    self.heads = TaskHeads(w, bw, outputs, param=param, rngs=rngs, dtype=dt, param_dtype=pdt)
    self.heads.heads = nnx.Dict({k: _reaxis(h, last_axis) for k, h in self.heads.heads.items()})
    self.act = activation(cfg.activation)
    self.sow_activations = cfg.sow_activations

  def encode(self, x: jax.Array) -> jax.Array:
    return self._trunk(x, None)[0]

  def tap_paths(self) -> list[tuple]:
    """Parameter paths (in the pure params dict) of the Dense layers :meth:`encode_tapped`
    taps, in call order: ``("layers", i)`` with leaves ``kernel`` and ``bias``."""
    return [("layers", i) for i in range(len(self.layers))]

  def encode_tapped(self, x: jax.Array, deltas: list[jax.Array]):
    """:meth:`encode` with ``deltas[i]`` ``[B, width]`` added to Dense ``i``'s output.

    The gradient of a loss w.r.t. ``deltas[i]`` (zeros) is that layer's output cotangent, and
    the returned inputs ``[B, fan_in]`` are the rows it multiplied: with both,
    ``jaxmtl.mtl.ghost`` forms per-task Gramians and updates without per-task weight
    gradients. Returns ``(features [B, width], [layer inputs])``.
    """
    if len(deltas) != len(self.layers):
      raise ValueError(f"encode_tapped needs one delta per layer ({len(self.layers)}), "
                       f"got {len(deltas)}")
    return self._trunk(x, deltas)

  def _trunk(self, x: jax.Array, deltas):
    """The shared layers: (features, [each layer's input rows]); ``deltas`` added to the
    layer outputs when given (activations are sown only in the plain forward)."""
    h = x.reshape(x.shape[0], -1)
    inputs = []
    for i, layer in enumerate(self.layers):
      inputs.append(h)
      y = layer(h)
      if deltas is not None:
        y = y + deltas[i].astype(y.dtype)
      h = self.act(y)
      if self.sow_activations and deltas is None:
        self.sow(nnx.Intermediate, f"layer_{i}", jnp.abs(h).mean())
    return h, inputs

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = self.heads(self.encode(x))
    if self.sow_activations:
      for k, v in out.items():
        self.sow(nnx.Intermediate, f"head_{k}", jnp.abs(v).mean())
    return out


# Layers alternate (input, mlp), (mlp, embed), (embed, mlp), ... so that with
# FSDP + TP each activation's feature axis is sharded the same way on both sides.
def _out_axis(i: int) -> str:
  return "mlp" if i % 2 == 0 else "embed"


def _in_axis(i: int) -> str:
  return "input" if i == 0 else _out_axis(i - 1)


def _reaxis(head: Dense, in_axis: str) -> Dense:
  head.kernel.set_metadata("axes", (in_axis, head.kernel.get_metadata()["axes"][1]))
  return head
