"""One readout head per task (μP role "output")."""
from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx

from jaxmtl.models.layers import Dense
from jaxmtl.mup import Parametrization


class TaskHeads(nnx.Module):
  """A Dense readout per task: features [B, ..., d] -> {task: logits [B, ..., classes]}."""

  def __init__(self, features: int, base_features: int, outputs: Mapping[str, int], *,
               param: Parametrization, rngs: nnx.Rngs, dtype: Any, param_dtype: Any,
               out_axis: str = "classes"):
    self.heads = nnx.Dict({
        name: Dense(features, n, role="output", axes=("embed", out_axis), param=param,
                    base_in=base_features, base_out=n, rngs=rngs,
                    zero_init=param.zero_readout, dtype=dtype, param_dtype=param_dtype)
        for name, n in sorted(outputs.items())})

  def __call__(self, feats: jax.Array) -> dict[str, jax.Array]:
    return {name: head(feats).astype("float32") for name, head in self.heads.items()}
