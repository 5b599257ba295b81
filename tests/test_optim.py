"""Tests for jaxmtl.optim: per-parameter rates under schedules, weight decay, ε, Adam-atan2."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxmtl import mup
from jaxmtl import optim


def _rule(role="hidden", lr=1.0, eps=1.0, wd=1.0) -> mup.ParamRule:
  return mup.ParamRule(role=role, init_std=1.0, multiplier=1.0, lr_scale=lr, eps_scale=eps,
                       wd_scale=wd)


def _step(cfg, rules, params, grads, state=None):
  tx = optim.make_optimizer(cfg, rules)
  state = tx.init(params) if state is None else state
  updates, state = tx.update(grads, state, params)
  return updates, state


@pytest.mark.parametrize("schedule", ["warmup_cosine", "warmup_linear", "rsqrt", "cosine"])
def test_schedule_multiplies_per_parameter_rates(schedule):
  cfg = optim.OptimizerConfig(name="sgd", lr=0.3, schedule=schedule, warmup_steps=3,
                              total_steps=10, min_lr_ratio=0.1)
  rules = {"a": _rule(lr=1.0), "b": _rule(lr=0.25)}
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
  grads = {"a": jnp.full((2, 2), 0.5), "b": jnp.full((2, 2), 0.5)}
  tx = optim.make_optimizer(cfg, rules)
  state = tx.init(params)
  shape = optim.schedule_shape(cfg)
  step = jax.jit(tx.update)
  for t in range(12):
    u, state = step(grads, state, params)
    np.testing.assert_allclose(u["a"] / u["b"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(u["a"], -0.3 * float(shape(t)) * 0.5, rtol=1e-6)
    assert float(shape(t)) > 0


def test_schedule_shapes():
  wc = optim.schedule_shape(optim.OptimizerConfig(schedule="warmup_cosine", warmup_steps=4,
                                                  total_steps=14, min_lr_ratio=0.1))
  assert [float(wc(t)) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
  assert float(wc(9)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
  assert float(wc(14)) == pytest.approx(0.1) and float(wc(100)) == pytest.approx(0.1)
  lin = optim.schedule_shape(optim.OptimizerConfig(schedule="linear", total_steps=10))
  assert float(lin(0)) == 1.0 and float(lin(5)) == pytest.approx(0.5)
  rs = optim.schedule_shape(optim.OptimizerConfig(schedule="rsqrt", warmup_steps=4))
  assert float(rs(15)) == pytest.approx(0.5)
  const = optim.schedule_shape(optim.OptimizerConfig())
  assert float(const(0)) == float(const(10 ** 6)) == 1.0


# θ = 2, g = 0.5, lr = 0.1, wd = 0.01, lr_scale = 0.5, wd_scale = 2 (hand-computed below).
TH, G, LR, WD, LS, WS = 2.0, 0.5, 0.1, 0.01, 0.5, 2.0


@pytest.mark.parametrize("mode, expected", [
    ("coupled", -LR * LS * (G + WD * WS * TH)),
    ("decoupled", -LR * LS * (G + WD * WS * TH)),
    ("independent", -LR * LS * G - WD * WS * TH),
])
def test_weight_decay_sgd(mode, expected):
  cfg = optim.OptimizerConfig(name="sgd", lr=LR, weight_decay=WD, weight_decay_mode=mode)
  rules = {"w": _rule(lr=LS, wd=WS), "b": _rule("vector", lr=LS, wd=WS)}
  params = {"w": jnp.full((2, 2), TH), "b": jnp.full((2,), TH)}
  grads = {"w": jnp.full((2, 2), G), "b": jnp.full((2,), G)}
  u, _ = _step(cfg, rules, params, grads)
  np.testing.assert_allclose(u["w"], expected, rtol=1e-6)
  np.testing.assert_allclose(u["b"], -LR * LS * G, rtol=1e-6)  # vectors not decayed
  u, _ = _step(dataclasses.replace(cfg, decay_vectors=True), rules, params, grads)
  np.testing.assert_allclose(u["b"], expected, rtol=1e-6)


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "independent"])
def test_weight_decay_adam_first_step(mode):
  eps = 1e-3
  cfg = optim.OptimizerConfig(name="adamw", lr=LR, eps=eps, weight_decay=WD,
                              weight_decay_mode=mode)
  params, grads = {"w": jnp.full((3,), TH)}, {"w": jnp.full((3,), G)}
  u, _ = _step(cfg, {"w": _rule(lr=LS, wd=WS)}, params, grads)
  # First Adam step: m̂ = g, v̂ = g², direction = g / (|g| + ε).
  if mode == "coupled":
    g = G + WD * WS * TH
    expected = -LR * LS * g / (abs(g) + eps)
  elif mode == "decoupled":
    expected = -LR * LS * (G / (G + eps) + WD * WS * TH)
  else:
    expected = -LR * LS * G / (G + eps) - WD * WS * TH
  # float32 bias correction 1 - 0.999 is off by 1e-5 relative (as in optax.scale_by_adam).
  np.testing.assert_allclose(u["w"], expected, rtol=2e-5)


def test_adam_matches_optax_and_eps_scale():
  params = {"a": jnp.zeros((4,)), "b": jnp.zeros((4,))}
  cfg = optim.OptimizerConfig(name="adam", lr=0.01, b1=0.8, b2=0.9, eps=1e-2)
  ours, ref = optim.make_optimizer(cfg, None), optax.adam(0.01, b1=0.8, b2=0.9, eps=1e-2)
  s1, s2 = ours.init(params), ref.init(params)
  for t in range(4):
    g = jax.tree.map(lambda p: jnp.arange(4.0) * 0.01 * (t + 1) - 0.015, params)
    u1, s1 = ours.update(g, s1, params)
    u2, s2 = ref.update(g, s2, params)
    np.testing.assert_allclose(u1["a"], u2["a"], rtol=1e-5, atol=1e-9)
  # Per-parameter ε: g = 1e-8, ε = 1e-8, eps_scale 0.25 -> direction g / (g + 0.25 ε) = 0.8.
  cfg = optim.OptimizerConfig(name="adam", lr=1.0, eps=1e-8)
  rules = {"a": _rule(eps=1.0), "b": _rule(eps=0.25)}
  g = {"a": jnp.full((4,), 1e-8), "b": jnp.full((4,), 1e-8)}
  u, _ = _step(cfg, rules, params, g)
  np.testing.assert_allclose(u["a"], -0.5, rtol=1e-5)
  np.testing.assert_allclose(u["b"], -0.8, rtol=1e-5)


def test_adam_atan2():
  cfg = optim.OptimizerConfig(name="adam_atan2", lr=1.0, b1=0.5, b2=0.75)
  params = {"w": jnp.zeros((2,))}
  tx = optim.make_optimizer(cfg, {"w": _rule(lr=0.5)})
  state = tx.init(params)
  u, state = tx.update({"w": jnp.array([3.0, -1e-3])}, state, params)
  np.testing.assert_allclose(u["w"], [-0.5 * math.pi / 4, 0.5 * math.pi / 4], rtol=1e-6)
  u, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params)
  # Step 2 for coordinate 0: m = .5·(.5·3) + .5·1 = 1.25, v = .75·(.25·9) + .25·1 = 1.9375;
  # m̂ = 1.25 / .75, v̂ = 1.9375 / .4375.
  m_hat, v_hat = 1.25 / 0.75, 1.9375 / 0.4375
  np.testing.assert_allclose(u["w"][0], -0.5 * math.atan2(m_hat, math.sqrt(v_hat)), rtol=1e-6)
  # ε-free and scale-invariant: gradients 1e15× smaller give the same update (Adam with
  # ε = 1e-8 would nearly stop).
  state2 = tx.init(params)
  ua, _ = tx.update({"w": jnp.array([3e-15, 2e-15])}, state2, params)
  ub, _ = tx.update({"w": jnp.array([3.0, 2.0])}, state2, params)
  np.testing.assert_allclose(ua["w"], ub["w"], rtol=1e-6)


def test_lion_matches_optax():
  params = {"w": jnp.linspace(-1, 1, 5).reshape(1, 5)}  # rank 2: decayed by default
  cfg = optim.OptimizerConfig(name="lion", lr=0.01, b1=0.9, b2=0.99, weight_decay=0.1)
  ours, ref = optim.make_optimizer(cfg), optax.lion(0.01, b1=0.9, b2=0.99, weight_decay=0.1)
  s1, s2 = ours.init(params), ref.init(params)
  for t in range(3):
    g = {"w": jnp.cos(jnp.arange(5.0) + t).reshape(1, 5)}
    u1, s1 = ours.update(g, s1, params)
    u2, s2 = ref.update(g, s2, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_sgd_momentum_and_clipping():
  cfg = optim.OptimizerConfig(name="sgd", lr=1.0, momentum=0.9, grad_clip_norm=1.0)
  params = {"w": jnp.zeros((2,))}
  tx = optim.make_optimizer(cfg)
  state = tx.init(params)
  u, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)  # clipped to norm 1
  np.testing.assert_allclose(u["w"], [-0.6, -0.8], rtol=1e-6)
  u, state = tx.update({"w": jnp.array([0.3, 0.4])}, state, params)
  np.testing.assert_allclose(u["w"], [-(0.9 * 0.6 + 0.3), -(0.9 * 0.8 + 0.4)], rtol=1e-6)


class _Tiny(nnx.Module):
  def __init__(self, p: mup.Parametrization):
    self.w = nnx.Param(jnp.ones((8, 8)), mup=p.rule("hidden", 8, 8, 2, 2))
    self.b = nnx.Param(jnp.ones((8,)), mup=p.rule("vector", 1, 8, 1, 2))


def test_nnx_state_params_and_jit():
  model = _Tiny(mup.Parametrization(name="mup", optimizer="sgd"))
  _, state = nnx.split(model)
  rules = jax.tree.map(lambda v: v.get_metadata()["mup"], state,
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  cfg = optim.OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.5,
                              weight_decay_mode="independent")
  tx = optim.make_optimizer(cfg, rules)
  opt_state = tx.init(state)
  grads = jax.tree.map(jnp.ones_like, state)
  u, _ = jax.jit(tx.update)(grads, opt_state, state)
  np.testing.assert_allclose(u["w"][...], -0.1 * 1.0 - 0.5 * 1.0, rtol=1e-6)  # m_out/m_in = 1
  np.testing.assert_allclose(u["b"][...], -0.1 * 4.0, rtol=1e-6)  # vector lr × m_out = 4


def test_rules_structure_mismatch_raises():
  tx = optim.make_optimizer(optim.OptimizerConfig(), {"a": _rule()})
  params = {"x": jnp.ones(2)}
  with pytest.raises(ValueError, match="mirroring the params"):
    tx.update(params, tx.init(params), params)


def test_weight_decay_needs_params():
  tx = optim.make_optimizer(optim.OptimizerConfig(weight_decay=0.1))
  params = {"x": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="adagrad"), "valid choices: adam, adamw, adam_atan2, sgd, lion"),
    (dict(schedule="step"), "valid choices: constant, cosine, linear, warmup_cosine"),
    (dict(weight_decay_mode="l2"), "valid choices: coupled, decoupled, independent"),
    (dict(schedule="cosine", total_steps=0), "total_steps"),
    (dict(lr=0.0), "lr"),
    (dict(grad_clip_norm=0.0), "grad_clip_norm"),
])
def test_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.OptimizerConfig(**kwargs)
