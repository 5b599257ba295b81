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
