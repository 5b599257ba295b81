"""FLOP and parameter counting: OLMo-ladder final.json exactness and hand-computed cases."""
import json

import pytest

from jaxmtl.scaling import flops as FL

LADDER = {"190M": "190M", "370M": "370M", "760M": "760M", "1.3B": "1B", "7B-4T": "7B",
          "13B-5T": "13B"}


@pytest.mark.parametrize("label,size", sorted(LADDER.items()))
def test_olmo_ladder_final_json_exact(shared_data, label, size):
  ref = json.load(open(shared_data / "scaling" / "olmo-ladder" / "final.json"))[label]
  cfg = FL.OLMO_LADDER_SIZES[size]
  pc = FL.param_count(vocab_size=FL.OLMO_LADDER_VOCAB, qk_norm=True, **cfg)
  assert pc.non_embedding == ref["n"]
  assert FL.olmo_flops_per_token(vocab_size=FL.OLMO_LADDER_VOCAB,
                                 seq_len=FL.OLMO_LADDER_SEQ_LEN, **cfg) == ref["flops"]


def test_param_count_by_hand():
  pc = FL.param_count(n_layers=2, d_model=8, n_heads=2, d_ff=16, vocab_size=10, glu=False,
                      tied_embeddings=True)
  # per layer: attn 4*64 + mlp 2*128 + 2 norms*8 = 528
  assert pc.blocks == 2 * 528 and pc.embedding == 80 and pc.head == 0
  assert pc.total == 1056 + 8 + 80 and pc.non_embedding == 1064
  gqa = FL.param_count(n_layers=1, d_model=8, n_heads=4, n_kv_heads=1, d_ff=16, vocab_size=10)
  assert gqa.blocks == 2 * 64 + 2 * 8 * 2 + 3 * 128 + 16


def test_attended_keys():
  assert FL.attended_keys(8, causal="none") == 8
  assert FL.attended_keys(8, causal="half") == 4.5
  assert FL.attended_keys(8, causal="half", window=2) == (1 + 2 * 7) / 8
  assert FL.attended_keys(8, causal="none", window=3) == 3
  with pytest.raises(ValueError, match="causal"):
    FL.attended_keys(8, causal="full")


def test_transformer_flops_by_hand():
  kw = dict(n_layers=1, d_model=4, n_heads=2, d_ff=8, vocab_size=5, seq_len=4, glu=False)
  fwd = 2 * (4 * 16) + 2 * (2 * 32) + 4 * 4 * 4 + 2 * 20
  assert FL.transformer_flops_per_token(causal="none", training=False, **kw) == fwd
  half = fwd - 4 * 4 * (4 - 2.5)
  assert FL.transformer_flops_per_token(causal="half", **kw) == 3 * half
  assert FL.six_n(100) == 600
  with pytest.raises(ValueError, match="n_layers"):
    FL.transformer_flops_per_token(**{**kw, "n_layers": 0})
  with pytest.raises(ValueError, match="multiple"):
    FL.param_count(n_layers=1, d_model=8, n_heads=4, n_kv_heads=3, d_ff=8, vocab_size=5)


# jaxmtl's own transformer: exact parameter count, and the FLOPs XLA's cost analysis reports.
@pytest.mark.parametrize("width,depth,heads,kv,glu,seq,train", [
    (64, 2, 4, None, False, 64, True),   # MHA, GELU MLP: train step (grad of the loss)
    (96, 2, 4, 2, True, 128, False),     # GQA, SwiGLU: forward
])
def test_model_counts_match_built_model_and_xla(width, depth, heads, kv, glu, seq, train):
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jaxmtl.models import ModelConfig, abstract_model
  from jaxmtl.mup import Parametrization
  cfg = ModelConfig(name="transformer", width=width, depth=depth, num_heads=heads,
                    num_kv_heads=kv, glu=glu, activation="silu" if glu else "gelu")
  graphdef, params, _, _ = abstract_model(cfg, (seq,), {"lm": 256}, Parametrization())
  pc = FL.model_param_count(cfg)
  assert pc.total == sum(x.size for x in jax.tree.leaves(params))
  assert pc.embedding == params["embed"]["embedding"].size
  batch = 2
  tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)

  def loss(p, x):
    logits = nnx.merge(graphdef, p)(x)["lm"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, x).mean()

  for training, fn in ((True, jax.grad(loss)),) if train else ((False, loss),):
    cost = jax.jit(fn).lower(params, tokens).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] / (batch * seq)
    full = FL.model_flops_per_token(cfg, seq, causal="none", training=training)
    half = FL.model_flops_per_token(cfg, seq, causal="half", training=training)
    # XLA computes the whole masked S x S score matrix, so it matches causal="none" (all
    # matmuls, backward = 2 x forward) within a few percent; the excess (> 0) is elementwise
    # work (norms, softmax, GELU, cross-entropy) that a matmul count leaves out.
    # causal="half" is what a kernel skipping masked blocks needs: (S - 1) / 2 fewer keys.
    assert 1.0 < xla / full < 1.06, (training, xla, full)
    saved = (3 if training else 1) * depth * 4 * heads * cfg.head_dim * (seq - 1) / 2
    assert full - half == pytest.approx(saved)
