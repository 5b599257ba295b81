"""Parameter counts and training FLOPs per token of a decoder-only transformer.

The model is described by plain keyword arguments (no config object). Three FLOP counts:

* `six_n`: the Kaplan et al. 2020 (arXiv 2001.08361, sec. 2.1) approximation C = 6 N per
  token, N the non-embedding parameters.
* `transformer_flops_per_token`: the exact matmul count of training (forward + backward =
  3x forward, 2 FLOPs per multiply-accumulate): every projection and the LM head, plus the
  attention score and value products, which cost 2 * 2 * n_heads * head_dim * L_ctx per token
  forward, L_ctx the number of attended keys: seq_len (`causal="none"`), the average
  (seq_len + 1) / 2 (`causal="half"`, what a causal mask really needs), or min(window, ..)
  for sliding-window attention. GQA changes only the K/V projection sizes.
* `olmo_flops_per_token`: allenai/OLMo's `num_fwd_flops + num_bck_flops` (olmo/model.py,
  used by OLMo-ladder, Bhagia et al. 2024, arXiv 2412.04403, `MODEL_GFLOPS` /
  final.json): forward 2 N_nonemb + 4 n_layers d_model seq_len, backward
  4 N_total + 8 n_layers d_model seq_len, where N_nonemb excludes only the input embedding and
  N_total includes it. Reproduces final.json exactly (see tests/test_flops.py).

`model_param_count(cfg)` / `model_flops_per_token(cfg, seq_len)` apply these to jaxmtl's own
`TransformerLM` from its `ModelConfig` (exact: tests/test_flops.py checks the built model's
leaves and XLA's cost analysis, which counts the full masked attention matrix, i.e.
causal="none", plus 2-5 % elementwise work).

Parameter counting follows OLMo's blocks: q/k/v/o projections without bias, an MLP of
(2 if glu else 1) * d_ff input projection plus d_ff output projection, `norms_per_layer`
weight vectors of size d_model per block (OLMo-2 with QK-norm: 4, for q_norm/k_norm sized
d_model when n_kv_heads == n_heads), a final norm, an input embedding and (unless tied) an
output head of vocab_size x d_model.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ParamCount:
  """Parameter counts. embedding: input table; head: untied LM head (0 when tied)."""
  embedding: int
  head: int
  blocks: int
  final_norm: int

  @property
  def non_embedding(self) -> int:
    """All parameters except the input embedding (OLMo's include_embedding=False)."""
    return self.blocks + self.final_norm + self.head

  @property
  def total(self) -> int:
    return self.embedding + self.non_embedding


def _check(**kw: int | None) -> None:
  for k, v in kw.items():
    if v is None:
      continue
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"{k} must be a positive int, got {v!r}")


def _dims(d_model: int, n_heads: int, n_kv_heads: int | None, head_dim: int | None):
  head_dim = d_model // n_heads if head_dim is None else head_dim
  n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
  _check(head_dim=head_dim, n_kv_heads=n_kv_heads)
  if n_heads % n_kv_heads:
    raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
  return head_dim, n_kv_heads


def param_count(*, n_layers: int, d_model: int, n_heads: int, d_ff: int, vocab_size: int,
                n_kv_heads: int | None = None, head_dim: int | None = None,
                glu: bool = True, tied_embeddings: bool = False,
                norms_per_layer: int = 2, qk_norm: bool = False,
                final_norm: bool = True, norm_bias: bool = False, mlp_bias: bool = False,
                head_bias: bool = False) -> ParamCount:
  """Count parameters of a decoder-only transformer (no biases unless asked for).

  d_ff is the hidden width of the MLP (per GLU branch). qk_norm adds RMSNorm weights of size
  n_heads*head_dim (q) and n_kv_heads*head_dim (k) per layer, as OLMo-2. norm_bias: every norm
  (the `norms_per_layer` ones and the final one) also has a bias (LayerNorm); mlp_bias: the MLP
  projections have biases ((2 if glu else 1) * d_ff + d_model per layer); head_bias: the
  untied LM head has a vocab_size bias.
  """
  _check(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
         vocab_size=vocab_size)
  hd, kv = _dims(d_model, n_heads, n_kv_heads, head_dim)
  attn = d_model * n_heads * hd * 2 + d_model * kv * hd * 2
  mlp = d_model * d_ff * (3 if glu else 2)
  if mlp_bias:
    mlp += d_ff * (2 if glu else 1) + d_model
  vectors = 2 if norm_bias else 1
  norms = vectors * norms_per_layer * d_model + ((n_heads + kv) * hd if qk_norm else 0)
  emb = vocab_size * d_model
  head = 0 if tied_embeddings else emb + (vocab_size if head_bias else 0)
  return ParamCount(embedding=emb, head=head, blocks=n_layers * (attn + mlp + norms),
                    final_norm=vectors * d_model if final_norm else 0)


def model_param_count(model: Any) -> ParamCount:
  """Exact parameter count of jaxmtl's own `TransformerLM` (one LM head) from its config.

  `model` is a `jaxmtl.models.ModelConfig` (or anything with its fields): pre-norm blocks with
  two norms (LayerNorm: gain + bias; RMSNorm: gain), bias-free q/k/v/o, MLP projections with
  biases, a final norm, an input embedding and an untied head Dense with bias
  (tests/test_flops.py checks it against the leaves of the built model).
  """
  if getattr(model, "name", "transformer") != "transformer":
    raise ValueError(f"model_param_count counts the 'transformer' family, got {model.name!r}")
  return param_count(n_layers=model.depth, d_model=model.width, n_heads=model.num_heads,
                     n_kv_heads=model.num_kv_heads, d_ff=int(model.width * model.mlp_ratio),
                     vocab_size=model.vocab_size, glu=model.glu, norms_per_layer=2,
                     norm_bias=model.norm == "layernorm", mlp_bias=True, head_bias=True)


def model_flops_per_token(model: Any, seq_len: int, **kw: Any) -> float:
  """`transformer_flops_per_token` of jaxmtl's `TransformerLM` with config `model` at
  `seq_len` (keyword options such as causal=, training= pass through)."""
  if getattr(model, "name", "transformer") != "transformer":
    raise ValueError(f"model_flops_per_token counts the 'transformer' family, got "
                     f"{model.name!r}")
  return transformer_flops_per_token(
      n_layers=model.depth, d_model=model.width, n_heads=model.num_heads,
      n_kv_heads=model.num_kv_heads, d_ff=int(model.width * model.mlp_ratio),
      vocab_size=model.vocab_size, seq_len=seq_len, glu=model.glu, **kw)


def six_n(non_embedding_params: int) -> int:
  """Kaplan's training FLOPs per token, 6 N (arXiv 2001.08361)."""
  return 6 * int(non_embedding_params)


def attended_keys(seq_len: int, *, causal: str = "half", window: int | None = None) -> float:
  """Average number of keys a query attends to.

  causal: "none" (every query scores all seq_len keys, the usual convention of Kaplan /
  PaLM / OLMo), or "half" (causal mask: query i sees i + 1 keys, average (seq_len + 1)/2).
  window: sliding window w (query i sees min(i + 1, w) keys under "half", min(w, seq_len)
  under "none").
  """
  _check(seq_len=seq_len, window=window)
  if causal not in ("none", "half"):
    raise ValueError(f"causal must be 'none' or 'half', got {causal!r}")
  w = seq_len if window is None else min(window, seq_len)
  if causal == "none":
    return float(w)
  # sum_{i=0}^{S-1} min(i + 1, w) / S
  full = w * (w + 1) / 2 + (seq_len - w) * w
  return full / seq_len


def transformer_flops_per_token(*, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                                vocab_size: int, seq_len: int, n_kv_heads: int | None = None,
                                head_dim: int | None = None, glu: bool = True,
                                causal: str = "half", window: int | None = None,
                                include_head: bool = True, training: bool = True) -> float:
  """Exact matmul FLOPs per token (forward x3 when training), usable for MFU.

  Counts q/k/v/o projections (GQA-sized), the MLP, attention scores QK^T and the weighted sum
  of V over `attended_keys(seq_len, causal=, window=)` keys, and the LM head (include_head).
  Norms, softmax and activations are ignored (not matmuls). Returns a float because causal
  halving gives half-integers.
  """
  _check(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
         vocab_size=vocab_size, seq_len=seq_len)
  hd, kv = _dims(d_model, n_heads, n_kv_heads, head_dim)
  proj = 2 * (d_model * n_heads * hd * 2 + d_model * kv * hd * 2)
  mlp = 2 * d_model * d_ff * (3 if glu else 2)
  attn = 2 * 2 * n_heads * hd * attended_keys(seq_len, causal=causal, window=window)
  fwd = n_layers * (proj + mlp + attn) + (2 * d_model * vocab_size if include_head else 0)
  return (3.0 if training else 1.0) * fwd


def olmo_flops_per_token(*, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                         vocab_size: int, seq_len: int, tied_embeddings: bool = False,
                         qk_norm: bool = True, norms_per_layer: int = 2) -> int:
  """allenai/OLMo `num_fwd_flops + num_bck_flops` per token (OLMo-ladder's MODEL_GFLOPS).

  Defaults describe the OLMo-2 / OLMo-ladder blocks (SwiGLU, QK-norm, untied head); vocab_size
  is OLMo's padded embedding_size (100352 for the dolma2 tokenizer), seq_len the
  max_sequence_length (4096 for the ladder).
  """
  pc = param_count(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                   vocab_size=vocab_size, glu=True, tied_embeddings=tied_embeddings,
                   norms_per_layer=norms_per_layer, qk_norm=qk_norm)
  fwd = 2 * pc.non_embedding + 4 * n_layers * d_model * seq_len
  bwd = 4 * pc.total + 8 * n_layers * d_model * seq_len
  return fwd + bwd


# OLMo-ladder sizes (allenai/OLMo-ladder src/ladder/ladder.py MODEL_CONFIGS): OLMo's
# mlp_ratio=8 with SwiGLU gives d_ff = 4 d_model; 7B/13B set mlp_hidden_size (d_ff = half).
OLMO_LADDER_SIZES = {
    "190M": dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072),
    "370M": dict(n_layers=16, d_model=1024, n_heads=16, d_ff=4096),
    "600M": dict(n_layers=16, d_model=1344, n_heads=16, d_ff=5376),
    "760M": dict(n_layers=16, d_model=1536, n_heads=16, d_ff=6144),
    "1B": dict(n_layers=16, d_model=2048, n_heads=16, d_ff=8192),
    "3B": dict(n_layers=16, d_model=3328, n_heads=16, d_ff=13312),
    "7B": dict(n_layers=32, d_model=4096, n_heads=32, d_ff=11008),
    "13B": dict(n_layers=40, d_model=5120, n_heads=40, d_ff=13824),
}
OLMO_LADDER_VOCAB = 100352
OLMO_LADDER_SEQ_LEN = 4096
