"""Model configuration (one flat dataclass for all model families)."""
from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyperparameters. Unused fields are ignored by a family.

  `base_width` is the base width for μP (None: the model's own, so every
  parametrization equals SP at the base shape); depth-μP's base depth is
  `mup.base_depth` (None: the model's own depth). Heads keep their count
  as width grows; the head dimension is width // num_heads.
  """
  name: Literal["mlp", "vit", "transformer"] = "mlp"
  width: int = 128
  depth: int = 2
  base_width: int | None = None
  mlp_ratio: float = 4.0
  num_heads: int = 4
  num_kv_heads: int | None = None
  patch_size: int = 4
  vocab_size: int = 256
  max_len: int = 128
  activation: Literal["relu", "gelu", "silu", "tanh"] = "gelu"
  glu: bool = False
  norm: Literal["layernorm", "rmsnorm"] = "layernorm"
  dtype: Literal["float32", "bfloat16", "float16"] = "float32"
  param_dtype: Literal["float32", "bfloat16"] = "float32"
  attention: Literal["xla", "cudnn", "auto"] = "auto"
  remat: bool = False
  sow_activations: bool = False

  def __post_init__(self):
    if self.width <= 0 or self.depth <= 0:
      raise ValueError(f"width and depth must be positive, got {self.width}, {self.depth}")
    if self.name in ("vit", "transformer"):
      if self.width % self.num_heads:
        raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
      kv = self.num_kv_heads or self.num_heads
      if self.num_heads % kv:
        raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {kv}")

  @property
  def base(self) -> int:
    return self.base_width or self.width

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def hidden(self) -> int:
    return int(self.width * self.mlp_ratio)
