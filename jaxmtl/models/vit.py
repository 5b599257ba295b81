"""A small Vision Transformer (Dosovitskiy et al., arXiv 2010.11929) with task heads."""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl.models.attention import Block, run_blocks
from jaxmtl.models.config import ModelConfig
from jaxmtl.models.heads import TaskHeads
from jaxmtl.models.layers import Dense, Norm, _param
from jaxmtl.mup import Parametrization


class ViT(nnx.Module):
  """images [B, H, W, C] -> patches -> blocks -> mean-pool -> {task: logits [B, classes]}.

  Patch embedding role "input"; learned position embedding [patches, d] role
  "input" (finite fan-in = number of patches); blocks "hidden"; heads "output".
  Mean pooling rather than a class token keeps every parameter a matrix or vector.
  """

  def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], outputs: Mapping[str, int],
               *, param: Parametrization, rngs: nnx.Rngs):
    if len(input_shape) != 3:
      raise ValueError(f"ViT expects images [H, W, C], got input shape {input_shape}")
    hgt, wid, ch = input_shape
    p = cfg.patch_size
    if hgt % p or wid % p:
      raise ValueError(f"image {hgt}x{wid} is not divisible by patch_size {p}")
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.patch, self.num_patches = p, (hgt // p) * (wid // p)
    self.patch_embed = Dense(p * p * ch, cfg.width, role="input", axes=("patch", "embed"),
                             param=param, base_in=p * p * ch, base_out=cfg.base, rngs=rngs,
                             dtype=dt, param_dtype=pdt)
    rule = param.rule("input", self.num_patches, cfg.width, self.num_patches, cfg.base)
    self.pos_embed = _param(rngs, (self.num_patches, cfg.width), rule, ("seq", "embed"), pdt)
    self.blocks = nnx.List([Block(cfg, param=param, rngs=rngs, causal=False, use_rope=False)
                            for _ in range(cfg.depth)])
    self.final_norm = Norm(cfg.width, kind=cfg.norm, param=param, base_features=cfg.base,
                           rngs=rngs, dtype=dt, param_dtype=pdt)
    self.heads = TaskHeads(cfg.width, cfg.base, outputs, param=param, rngs=rngs, dtype=dt,
                           param_dtype=pdt)
    self.remat, self.dtype = cfg.remat, dt

  def encode(self, images_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, c = images_BxHxWxC.shape
    p = self.patch
    x = images_BxHxWxC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = self.patch_embed(x.reshape(b, self.num_patches, p * p * c))
    x = x + self.pos_embed[...].astype(self.dtype)
    x = run_blocks(self.blocks, x, self.remat)
    return self.final_norm(x).mean(axis=1)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.heads(self.encode(images))
