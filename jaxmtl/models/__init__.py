"""Models with a functional boundary: `build_model` returns (graphdef, abstract params, metadata).

Every model maps inputs to `{task: logits}` and exposes `encode(x) -> features`
(the shared representation) and `heads(features) -> {task: logits}`.
"""
from __future__ import annotations

from typing import Any, Mapping

from flax import nnx

from jaxmtl.models.config import ModelConfig
from jaxmtl.models.layers import param_metadata
from jaxmtl.models.mlp import MLP
from jaxmtl.models.transformer import TransformerLM
from jaxmtl.models.vit import ViT
from jaxmtl.mup import Parametrization

FAMILIES = {"mlp": MLP, "vit": ViT, "transformer": TransformerLM}


def make_model(cfg: ModelConfig, input_shape: tuple[int, ...], outputs: Mapping[str, int],
               param: Parametrization, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates the model family `cfg.name` (concrete parameters)."""
  return FAMILIES[cfg.name](cfg, tuple(input_shape), dict(outputs), param=param, rngs=rngs)


def abstract_model(cfg: ModelConfig, input_shape, outputs, param: Parametrization):
  """(graphdef, abstract params [pure dict of ShapeDtypeStruct], axes tree, rules tree)."""
  model = nnx.eval_shape(lambda: make_model(cfg, input_shape, outputs, param, nnx.Rngs(0)))
  graphdef, state = nnx.split(model, nnx.Param)
  axes, rules = param_metadata(model)
  return graphdef, nnx.to_pure_dict(state), axes, rules


__all__ = ["ModelConfig", "MLP", "ViT", "TransformerLM", "make_model", "abstract_model",
           "param_metadata", "FAMILIES"]
