"""Tests for jaxmtl.mup: rules pinned to microsoft/mup 1.0.0, abc-equivalence, depth, errors.

Golden values come from tests/golden/make_mup_golden.py (microsoft/mup 1.0.0, torch 2.13.0):
MLP 784 -> w -> w -> 10 (Linear, Linear, MuReadout), base width 64, delta width 128.
Per parameter: (MuAdam lr, MuAdam weight_decay, MuSGD lr, MuSGD weight_decay, init std after
``set_base_shapes(rescale_params=True)``), all relative to lr = weight_decay = 1.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl import mup
from jaxmtl import optim

GOLDEN = {
  64: {
    "0.weight": (1.0, 1.0, 1.0, 1.0, 0.020619652471058063),
    "0.bias": (1.0, 1.0, 1.0, 1.0, 0.020619652471058063),
    "2.weight": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "2.bias": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "4.weight": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "4.bias": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "readout_multiplier": 1.0,
  },
  256: {
    "0.weight": (1.0, 1.0, 4.0, 0.25, 0.020619652471058063),
    "0.bias": (1.0, 1.0, 4.0, 0.25, 0.020619652471058063),
    "2.weight": (0.25, 4.0, 1.0, 1.0, 0.036084391824351615),
    "2.bias": (1.0, 1.0, 4.0, 0.25, 0.07216878364870323),
    "4.weight": (1.0, 1.0, 4.0, 0.25, 0.07216878364870323),
    "4.bias": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "readout_multiplier": 0.25,
  },
  1024: {
    "0.weight": (1.0, 1.0, 16.0, 0.0625, 0.020619652471058063),
    "0.bias": (1.0, 1.0, 16.0, 0.0625, 0.020619652471058063),
    "2.weight": (0.0625, 16.0, 1.0, 1.0, 0.018042195912175808),
    "2.bias": (1.0, 1.0, 16.0, 0.0625, 0.07216878364870323),
    "4.weight": (1.0, 1.0, 16.0, 0.0625, 0.07216878364870323),
    "4.bias": (1.0, 1.0, 1.0, 1.0, 0.07216878364870323),
    "readout_multiplier": 0.0625,
  },
}

# (role, fan_in, fan_out, base_fan_in, base_fan_out) of each parameter at width w (base 64).
def _shapes(w: int) -> dict:
  return {
      "0.weight": ("input", 784, w, 784, 64),
      "0.bias": ("vector", 1, w, 1, 64),
      "2.weight": ("hidden", w, w, 64, 64),
      "2.bias": ("vector", 1, w, 1, 64),
      "4.weight": ("output", w, 10, 64, 10),
      "4.bias": ("vector", 1, 10, 1, 10),
  }


# torch's default nn.Linear init has std 1/sqrt(3 fan_in): sigma = 1/sqrt(3) reproduces it.
TORCH_SIGMA = 1.0 / math.sqrt(3.0)


@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("wd_mode", ["coupled", "decoupled"])
def test_rules_match_microsoft_mup(width, wd_mode):
  adam = mup.Parametrization(name="mup", optimizer="adam", init_std=TORCH_SIGMA,
                             weight_decay_mode=wd_mode)
  sgd = dataclasses.replace(adam, optimizer="sgd")
  golden = GOLDEN[width]
  for name, shape in _shapes(width).items():
    adam_lr, adam_wd, sgd_lr, sgd_wd, std = golden[name]
    ra, rs = adam.rule(*shape), sgd.rule(*shape)
    assert ra.lr_scale == pytest.approx(adam_lr, rel=1e-12), name
    assert ra.wd_scale == pytest.approx(adam_wd, rel=1e-12), name
    assert rs.lr_scale == pytest.approx(sgd_lr, rel=1e-12), name
    assert rs.wd_scale == pytest.approx(sgd_wd, rel=1e-12), name
    assert ra.eps_scale == 1.0 and rs.eps_scale == 1.0  # microsoft/mup leaves ε alone
    if name.endswith("weight"):
      assert ra.init_std == pytest.approx(std, rel=1e-12), name
    else:  # mup's rescaled biases keep a width-constant std; jaxmtl zero-inits biases.
      assert std == GOLDEN[64][name][4] and ra.init_std == 0.0
  readout = adam.rule(*_shapes(width)["4.weight"])
  assert readout.multiplier == pytest.approx(golden["readout_multiplier"], rel=1e-12)


def test_independent_weight_decay_is_width_free():
  p = mup.Parametrization(name="mup", weight_decay_mode="independent")
  assert p.rule("hidden", 1024, 1024, 64, 64).wd_scale == 1.0
  assert p.rule("hidden", 1024, 1024, 64, 64).lr_scale == 1 / 16


def test_sp_rules_and_mup_equals_sp_at_base():
  sp = mup.Parametrization(name="sp", init_std=0.5, output_mult=2.0, input_mult=3.0)
  r = sp.rule("hidden", 256, 256, 64, 64)
  assert (r.init_std, r.multiplier, r.lr_scale, r.eps_scale, r.wd_scale) == (
      0.5 / 16, 1.0, 1.0, 1.0, 1.0)
  assert sp.rule("output", 256, 10, 64, 10).multiplier == 2.0
  assert sp.rule("input", 784, 256, 784, 64).multiplier == 3.0
  for name in ("mup", "mup_tp5", "depth_mup"):
    mp = dataclasses.replace(sp, name=name)
    for opt in ("adam", "sgd"):
      for shape in _shapes(64).values():
        assert dataclasses.replace(mp, optimizer=opt).rule(*shape) == dataclasses.replace(
            sp, optimizer=opt).rule(*shape)


def test_tp5_table3_scalings():
  for opt, out_lr in (("adam", 1 / 16), ("sgd", 1 / 16)):
    p = mup.Parametrization(name="mup_tp5", optimizer=opt, output_mult=2.0)
    r = p.rule("output", 1024, 10, 64, 10)
    assert r.multiplier == 2.0  # no width multiplier
    assert r.init_std == pytest.approx(1 / 8 / 16)  # std ∝ 1/fan_in (var 1/fan_in²)
    assert r.lr_scale == pytest.approx(out_lr)
  assert mup.Parametrization(name="mup_tp5").rule("output", 1024, 10, 64, 10).eps_scale == 16


def test_zero_init_options():
  p = mup.Parametrization(name="mup", zero_readout=True, zero_query=True)
  assert p.rule("output", 256, 10, 64, 10).init_std == 0.0
  assert p.rule("hidden", 256, 256, 64, 64, query=True).init_std == 0.0
  assert p.rule("hidden", 256, 256, 64, 64).init_std > 0.0
  q = mup.Parametrization(name="mup")
  assert q.rule("hidden", 256, 256, 64, 64, query=True).init_std > 0.0


def test_attention_scale():
  assert mup.Parametrization().attention_scale(64, 16) == 1 / 8
  p = mup.Parametrization(name="mup", attn_mult=2.0)
  assert p.attention_scale(64, 64) == 2.0 / 8  # equals SP at the base head dim
  assert p.attention_scale(256, 64) == pytest.approx(2.0 * 8 / 256)  # 1/d
  assert dataclasses.replace(p, attn_mode="mup").attention_scale(64, 16) == 2.0 / 64


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_depth_mup(alpha):
  p = mup.Parametrization(name="depth_mup", depth_alpha=alpha, base_depth=2)
  assert p.branch_multiplier(8) == pytest.approx(4.0 ** -alpha)
  assert mup.Parametrization(name="mup").branch_multiplier(8) == 1.0
  base = p.rule("hidden", 256, 256, 64, 64)
  deep = p.rule("hidden", 256, 256, 64, 64, depth=8)
  assert deep.lr_scale == pytest.approx(base.lr_scale * 4.0 ** (alpha - 1))
  assert deep.eps_scale == pytest.approx(base.eps_scale * 4.0 ** -alpha)
  assert deep.init_std == base.init_std and deep.multiplier == base.multiplier
  sgd = dataclasses.replace(p, optimizer="sgd").rule("hidden", 256, 256, 64, 64, depth=8)
  assert sgd.lr_scale == pytest.approx(4.0 ** (2 * alpha - 1))
  assert p.rule("hidden", 256, 256, 64, 64, depth=2) == base
  # depth is ignored outside depth_mup
  assert mup.Parametrization(name="mup").rule("hidden", 256, 256, 64, 64, depth=8) == \
      mup.Parametrization(name="mup").rule("hidden", 256, 256, 64, 64)


def test_eps_mode_everett():
  p = mup.Parametrization(name="mup", eps_mode="everett")
  assert p.rule("hidden", 256, 256, 64, 64).eps_scale == 0.25
  assert p.rule("output", 256, 10, 64, 10).eps_scale == 0.25
  assert p.rule("vector", 1, 10, 1, 10).eps_scale == 1.0
  assert dataclasses.replace(p, name="mup_tp5").rule("output", 256, 10, 64, 10).eps_scale == 1.0
  assert dataclasses.replace(p, optimizer="sgd").rule("hidden", 256, 256, 64, 64).eps_scale == 1.0


def test_tree_helpers():
  p = mup.Parametrization(name="mup")
  rules = {"a": p.rule("hidden", 256, 256, 64, 64), "b": [p.rule("vector", 1, 256, 1, 64)]}
  assert mup.lr_multipliers(rules) == {"a": 0.25, "b": [1.0]}
  assert mup.wd_multipliers(rules) == {"a": 4.0, "b": [1.0]}
  assert mup.eps_multipliers(rules) == {"a": 1.0, "b": [1.0]}
  assert mup.init_stds(rules)["b"] == [0.0]
  assert mup.multipliers(rules) == {"a": 1.0, "b": [1.0]}
  assert len(jax.tree.leaves(rules)) == 2  # ParamRule is a leaf


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="umup"), "valid choices: sp, mup, mup_tp5, depth_mup"),
    (dict(optimizer="adagrad"), "valid choices: adam, adamw, adam_atan2, sgd, lion"),
    (dict(weight_decay_mode="l2"), "valid choices: coupled, decoupled, independent"),
    (dict(depth_alpha=2.0), "valid choices: 0.5, 1.0"),
    (dict(eps_mode="x"), "valid choices: mup, everett"),
    (dict(base_depth=0), "base_depth"),
])
def test_bad_parametrization(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mup.Parametrization(**kwargs)


def test_bad_rule_arguments():
  p = mup.Parametrization(name="mup")
  with pytest.raises(ValueError, match="valid choices: input, hidden, output, vector"):
    p.rule("embedding", 10, 10, 10, 10)
  with pytest.raises(ValueError, match="fan_in"):
    p.rule("hidden", 0, 10, 10, 10)
  with pytest.raises(ValueError, match="head_dim"):
    p.attention_scale(0, 8)


# --- mup (multiplier form) and mup_tp5 (TP-V Table 3) train identically -------------------

def _mlp_rules(p: mup.Parametrization, w: int, base: int = 4) -> dict:
  return {
      "w0": p.rule("input", 8, w, 8, base), "b0": p.rule("vector", 1, w, 1, base),
      "w1": p.rule("hidden", w, w, base, base), "b1": p.rule("vector", 1, w, 1, base),
      "w2": p.rule("output", w, 3, base, 3), "b2": p.rule("vector", 1, 3, 1, 3),
  }


def _init(rules: dict, w: int, key) -> dict:
  shapes = {"w0": (8, w), "b0": (w,), "w1": (w, w), "b1": (w,), "w2": (w, 3), "b2": (3,)}
  keys = dict(zip(sorted(shapes), jax.random.split(key, len(shapes))))
  return {k: rules[k].init_std * jax.random.normal(keys[k], s, jnp.float32)
          for k, s in shapes.items()}


def _loss(params, rules, x, y):
  m = {k: r.multiplier for k, r in rules.items()}
  h = jax.nn.relu(m["w0"] * (x @ params["w0"]) + params["b0"])
  h = jax.nn.relu(m["w1"] * (h @ params["w1"]) + params["b1"])
  out = m["w2"] * (h @ params["w2"]) + params["b2"]
  return jnp.mean((out - y) ** 2), out


def _train(name: str, opt: str, steps: int = 6, eps_scale: float | None = None):
  w = 16
  p = mup.Parametrization(name=name, optimizer="sgd" if opt == "sgd" else "adam",
                          output_mult=2.0)
  rules = _mlp_rules(p, w)
  if eps_scale is not None:
    rules["w2"] = dataclasses.replace(rules["w2"], eps_scale=eps_scale)
  params = _init(rules, w, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (32, 8), jnp.float32)
  y = jax.random.normal(jax.random.key(2), (32, 3), jnp.float32)
  tx = optim.make_optimizer(optim.OptimizerConfig(name=opt, lr=0.05, eps=1e-3), rules)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    (loss, out), g = jax.value_and_grad(_loss, has_aux=True)(params, rules, x, y)
    updates, state = tx.update(g, state, params)
    return jax.tree.map(lambda a, b: a + b, params, updates), state, loss, out

  losses, outs = [], []
  for _ in range(steps):
    params, state, loss, out = step(params, state)
    losses.append(float(loss))
    outs.append(np.asarray(out))
  return np.array(losses), np.stack(outs)


@pytest.mark.parametrize("opt", ["adam", "sgd", "adam_atan2"])
def test_mup_and_tp5_train_identically(opt):
  l_mup, o_mup = _train("mup", opt)
  l_tp5, o_tp5 = _train("mup_tp5", opt)
  assert l_mup[-1] < l_mup[0]  # it trains
  np.testing.assert_allclose(l_tp5, l_mup, rtol=1e-6)
  np.testing.assert_allclose(o_tp5, o_mup, rtol=1e-5, atol=1e-7)


def test_tp5_needs_its_eps_scale():
  """Without the readout ε scaling the two forms drift apart (ε is not negligible here)."""
  l_mup, _ = _train("mup", "adam")
  l_bad, _ = _train("mup_tp5", "adam", eps_scale=1.0)
  assert np.abs(l_bad - l_mup).max() > 1e-4
