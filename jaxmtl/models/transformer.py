"""Decoder-only transformer language model (pre-norm, RoPE, optional GQA/SwiGLU)."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl.models.attention import Block, run_blocks
from jaxmtl.models.config import ModelConfig
from jaxmtl.models.heads import TaskHeads
from jaxmtl.models.layers import Embed, Norm
from jaxmtl.mup import Parametrization


class TransformerLM(nnx.Module):
  """tokens [B, L] int -> {task: logits [B, L, vocab]} (one LM head per task).

  Embedding: role "input", axes (vocab, embed). Blocks: role "hidden".
  Heads: role "output", axes (embed, vocab); not tied to the embedding (μP
  treats input and output layers differently).
  """

  def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], outputs: Mapping[str, int],
               *, param: Parametrization, rngs: nnx.Rngs):
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.width, param=param, base_features=cfg.base,
                       rngs=rngs, dtype=dt, param_dtype=pdt)
    self.blocks = nnx.List([Block(cfg, param=param, rngs=rngs, causal=True, use_rope=True)
                            for _ in range(cfg.depth)])
    self.final_norm = Norm(cfg.width, kind=cfg.norm, param=param, base_features=cfg.base,
                           rngs=rngs, dtype=dt, param_dtype=pdt)
    self.heads = TaskHeads(cfg.width, cfg.base, outputs, param=param, rngs=rngs, dtype=dt,
                           param_dtype=pdt, out_axis="vocab")
    self.remat, self.sow_activations = cfg.remat, cfg.sow_activations

  def _sow(self, name, x):
    self.sow(nnx.Intermediate, name, jnp.abs(x.astype(jnp.float32)).mean())

  def encode(self, tokens_BxL: jax.Array) -> jax.Array:
    x = self.embed(tokens_BxL.astype(jnp.int32))
    if self.sow_activations:
      self._sow("embed", x)
    x = run_blocks(self.blocks, x, self.remat, self._sow if self.sow_activations else None)
    return self.final_norm(x)

  def __call__(self, tokens_BxL: jax.Array) -> dict[str, jax.Array]:
    out = self.heads(self.encode(tokens_BxL))
    if self.sow_activations:
      for k, v in out.items():
        self._sow(f"head_{k}", v)
    return out
