"""Tests for jaxmtl.mtl.weighting: hand-computed values for each method, robustness, jit."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl.mtl import weighting as wt

GOLDEN = pathlib.Path(__file__).parent / "golden" / "weighting_golden.json"


def _run(weighting, losses, wstate, step=0, key=None, **extras):
  return weighting.update(jnp.asarray(losses, jnp.float32), wstate.params, wstate.state,
                          step=step, key=key, **extras)


def test_equal_sum_and_mean():
  losses = jnp.array([1.0, 2.0, 4.0])
  for reduction, expect in (("sum", 7.0), ("mean", 7.0 / 3)):
    w = wt.make_weighting("equal", reduction=reduction)
    total, aux = _run(w, losses, w.init(3))
    np.testing.assert_allclose(total, expect, rtol=1e-6)
    g = jax.grad(lambda l: _run(w, l, w.init(3))[0])(losses)
    np.testing.assert_allclose(g, aux.weights)


@pytest.mark.parametrize("param,s0,wfun", [
  ("libmtl", -0.5, lambda s: 1 / (2 * np.exp(s))), ("nash_mtl", 0.0, lambda s: np.exp(-s))])
def test_uncertainty_total_and_gradients(param, s0, wfun):
  w = wt.uncertainty(param)
  st = w.init(2)
  np.testing.assert_allclose(st.params["log_var"], [s0, s0])
  s = jnp.array([-0.5, 0.3])
  losses = jnp.array([2.0, 3.0])
  total, aux = w.update(losses, {"log_var": s}, st.state, step=0)
  expect = 2 / (2 * np.exp(-0.5)) - 0.25 + 3 / (2 * np.exp(0.3)) + 0.15
  np.testing.assert_allclose(total, expect, rtol=1e-6)
  np.testing.assert_allclose(aux.weights, wfun(np.array([-0.5, 0.3])), rtol=1e-6)
  gs, gl = jax.grad(lambda p, l: w.update(l, p, st.state, step=0)[0], argnums=(0, 1))(
    {"log_var": s}, losses)
  np.testing.assert_allclose(gs["log_var"], -np.array([2.0, 3.0]) / (2 * np.exp(s)) + 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(gl, 1 / (2 * np.exp(s)), rtol=1e-6)


def test_uncertainty_in_train_step_learns_log_var():
  w = wt.make_weighting("uw")
  params = {"a": jnp.array([1.0, 2.0])}
  wstate = w.init(2)

  def objective(p, wp):
    losses = p["a"] ** 2
    total, aux = w.update(losses, wp, wstate.state, step=0)
    return total, aux

  (_, aux), (gp, gw) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
    params, wstate.params)
  np.testing.assert_allclose(gp["a"], 2 * params["a"] * aux.weights, rtol=1e-6)
  assert gw["log_var"].shape == (2,) and np.all(np.isfinite(gw["log_var"]))


def test_dwa_step_window():
  w = wt.dwa(temperature=2.0, window="step")
  st = w.init(2)
  hist = [[1.0, 2.0], [0.5, 1.5], [0.4, 1.4], [0.3, 1.0]]
  got = []
  for t, l in enumerate(hist):
    _, aux = _run(w, l, st, step=t)
    st = wt.WeightingState(st.params, aux.state)
    got.append(np.asarray(aux.weights))
  np.testing.assert_allclose(got[0], [1, 1])
  np.testing.assert_allclose(got[1], [1, 1])
  for t in (2, 3):
    r = np.array(hist[t - 1]) / np.array(hist[t - 2])
    e = np.exp(r / 2.0)
    np.testing.assert_allclose(got[t], 2 * e / e.sum(), rtol=1e-6)


def test_dwa_epoch_window_uses_epoch_means():
  w = wt.make_weighting("dwa", window="epoch", steps_per_epoch=2)
  st = w.init(3)
  rng = np.random.default_rng(0)
  hist = rng.uniform(0.5, 2.0, size=(8, 3)).astype(np.float32)
  got = []
  upd = jax.jit(lambda l, s, t: w.update(l, {}, s, step=t))
  for t in range(8):
    _, aux = upd(hist[t], st.state, t)
    st = wt.WeightingState({}, aux.state)
    got.append(np.asarray(aux.weights))
  means = hist.reshape(4, 2, 3).mean(axis=1)
  for t in range(4):
    np.testing.assert_allclose(got[t], np.ones(3))
  for t in range(4, 8):
    e = t // 2
    r = means[e - 1] / means[e - 2]
    ex = np.exp(r / 2.0)
    np.testing.assert_allclose(got[t], 3 * ex / ex.sum(), rtol=1e-5)


def test_rlw_softmax_of_normals():
  w = wt.rlw()
  st = w.init(4)
  key = jax.random.key(3)
  total, aux = _run(w, [1.0, 2.0, 3.0, 4.0], st, key=key)
  expect = jax.nn.softmax(jax.random.normal(key, (4,)))
  np.testing.assert_allclose(aux.weights, expect, rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(aux.weights), 1.0, rtol=1e-6)
  np.testing.assert_allclose(total, expect @ jnp.arange(1.0, 5.0), rtol=1e-6)
  _, aux2 = _run(w, [1.0, 2.0, 3.0, 4.0], st, key=jax.random.key(4))
  assert not np.allclose(aux.weights, aux2.weights)
  with pytest.raises(ValueError, match="key"):
    _run(w, [1.0, 2.0, 3.0, 4.0], st)
  wb = wt.rlw("bernoulli")
  sample = jax.jit(jax.vmap(lambda k: wb.update(jnp.ones(2), {}, {}, key=k)[1].weights))
  ws = np.asarray(sample(jax.random.split(jax.random.key(0), 64)))
  assert set(ws.ravel().tolist()) <= {0.0, 1.0} and np.all(ws.sum(axis=1) >= 1)
  assert len({tuple(w) for w in ws.tolist()}) == 3  # (1,0), (0,1), (1,1); never (0,0)


def test_gradnorm_hand_computed():
  w = wt.gradnorm(alpha=1.5)
  st = w.init(3)
  n = jnp.array([1.0, 2.0, 4.0])
  losses = jnp.array([1.0, 1.0, 1.0])
  fn = lambda p, l, s: w.update(l, p, s, step=0, grad_norms=n)
  (total, aux), gp = jax.value_and_grad(fn, has_aux=True)(st.params, losses, st.state)
  # w = 1, r = 1, target = mean(n) = 7/3.
  np.testing.assert_allclose(aux.weights, [1, 1, 1], rtol=1e-6)
  np.testing.assert_allclose(total, 3 + abs(1 - 7 / 3) + abs(2 - 7 / 3) + abs(4 - 7 / 3),
                             rtol=1e-6)
  sn = np.array([-1.0, -2.0, 4.0])  # sign(w n - target) * n
  np.testing.assert_allclose(gp["logits"], sn - sn.sum() / 3, rtol=1e-5)
  np.testing.assert_allclose(aux.state["initial_losses"], losses)
  # Second step: r from the stored initial losses.
  l2 = jnp.array([0.5, 1.0, 0.25])
  total2, _ = w.update(l2, st.params, aux.state, step=1, grad_norms=n)
  r = np.array([0.5, 1.0, 0.25]) / np.mean([0.5, 1.0, 0.25])
  target = 7 / 3 * r ** 1.5
  np.testing.assert_allclose(total2, 1.75 + np.abs(np.array(n) - target).sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="grad_norms"):
    w.update(losses, st.params, st.state, step=0)


def _famo_reference(w, m, v, count, prev, curr, lr, gamma, minl=0.0, eps=1e-8):
  """Official FAMO logit step (softmax VJP + torch Adam with L2 weight decay) in numpy."""
  z = np.exp(w) / np.exp(w).sum()
  delta = np.log(prev - minl + eps) - np.log(curr - minl + eps)
  d = z * (delta - z @ delta) + gamma * w
  count += 1
  m = 0.9 * m + 0.1 * d
  v = 0.999 * v + 0.001 * d * d
  step = lr / (1 - 0.9 ** count) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** count) + 1e-8)
  return w - step, m, v, count


def test_famo_two_steps_match_official_formulas():
  f = wt.famo(lr=0.025, gamma=1e-3)
  st = f.init(3)
  seq = [([1.0, 2.0, 0.5], [0.8, 1.9, 0.45]), ([0.8, 1.9, 0.45], [0.7, 1.5, 0.44])]
  w = np.zeros(3)
  m = np.zeros(3)
  v = np.zeros(3)
  count = 0
  for prev, curr in seq:
    prev_a = jnp.array(prev)
    (total, aux), g = jax.value_and_grad(
      lambda l: f.update(l, {}, st.state, step=0), has_aux=True)(prev_a)
    z = np.exp(w) / np.exp(w).sum()
    d = np.array(prev) + 1e-8
    c = (z / d).sum()
    np.testing.assert_allclose(total, (np.log(d) * z / c).sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, z / (c * d), rtol=1e-5)
    state = f.after_step(jnp.array(curr), aux.state)
    st = wt.WeightingState({}, state)
    w, m, v, count = _famo_reference(w, m, v, count, np.array(prev), np.array(curr),
                                     0.025, 1e-3)
    np.testing.assert_allclose(state["logits"], w, rtol=1e-4, atol=1e-7)
  assert int(st.state["count"]) == 2


def _golden(section):
  if not GOLDEN.exists():
    pytest.skip("golden file missing; run tests/golden/make_weighting_golden.py")
  return json.loads(GOLDEN.read_text())[section]


def test_famo_matches_torch_golden():
  gold = _golden("famo")
  f = wt.famo(lr=gold["lr"], gamma=gold["gamma"])
  st = f.init(len(gold["losses"][0]))
  for prev, curr, logits, weights, lgrad in zip(gold["losses"], gold["losses_after"],
                                                gold["logits"], gold["weights"],
                                                gold["loss_grads"]):
    (total, aux), g = jax.value_and_grad(
      lambda l: f.update(l, {}, st.state, step=0), has_aux=True)(jnp.array(prev, jnp.float32))
    np.testing.assert_allclose(aux.weights, weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, lgrad, rtol=1e-5, atol=1e-7)
    st = wt.WeightingState({}, f.after_step(jnp.array(curr, jnp.float32), aux.state))
    np.testing.assert_allclose(st.state["logits"], logits, rtol=1e-4, atol=1e-6)


def test_gradnorm_matches_libmtl_golden():
  gold = _golden("gradnorm")
  w = wt.gradnorm(alpha=gold["alpha"])
  st = w.init(3)
  losses = jnp.array(gold["losses"], jnp.float32)
  fn = lambda p: w.update(losses, p, st.state, step=0, grad_norms=jnp.array(gold["grad_norms"]),
                          initial_losses=jnp.array(gold["initial_losses"]))
  (total, aux), g = jax.value_and_grad(fn, has_aux=True)({"logits": jnp.array(gold["logits"])})
  np.testing.assert_allclose(aux.weights, gold["weights"], rtol=1e-5)
  np.testing.assert_allclose(total - jnp.dot(aux.weights, losses), gold["l_grad"], rtol=1e-5)
  np.testing.assert_allclose(g["logits"], gold["logits_grad"], rtol=1e-4, atol=1e-6)


def test_db_mtl_matches_libmtl_golden():
  gold = _golden("db_mtl")
  d = wt.db_mtl(beta=gold["beta"], beta_sigma=gold["beta_sigma"])
  jacs = jnp.array(gold["jacobians"], jnp.float32)
  state = d.init(jacs[0])
  for jac, losses, upd_ref, alpha_ref in zip(jacs, gold["losses"], gold["updates"],
                                             gold["alphas"]):
    upd, aux = d.update(jac, jnp.array(losses), state)
    state = aux.state
    np.testing.assert_allclose(aux.weights, alpha_ref, rtol=1e-5)
    np.testing.assert_allclose(upd, upd_ref, rtol=1e-5, atol=1e-5)


def test_famo_next_batch_mode_updates_inside_update():
  f = wt.famo(logit_update="next_batch")
  st = f.init(2)
  _, aux = _run(f, [1.0, 2.0], st)
  assert np.all(aux.state["logits"] == 0)  # no previous losses yet
  _, aux2 = _run(f, [0.5, 1.9], wt.WeightingState({}, aux.state))
  w, *_ = _famo_reference(np.zeros(2), np.zeros(2), np.zeros(2), 0, np.array([1.0, 2.0]),
                          np.array([0.5, 1.9]), 0.025, 1e-3)
  np.testing.assert_allclose(aux2.state["logits"], w, rtol=1e-4)
  np.testing.assert_allclose(aux2.weights, np.exp(w) / np.exp(w).sum(), rtol=1e-5)


def test_db_mtl_one_and_two_steps():
  d = wt.make_weighting("db_mtl", beta=0.9, beta_sigma=0.5)
  jac = {"a": jnp.array([[3.0, 4.0], [0.0, 1.0]]), "b": jnp.array([[[0.0]], [[0.0]]])}
  losses = jnp.array([2.0, 0.5])
  state = d.init(jac)
  upd, aux = d.update(jac, losses, state)
  g = np.array([[3.0, 4.0], [0.0, 1.0]]) / (np.array([2.0, 0.5])[:, None] + 1e-8)
  buf = 0.1 * g  # beta_1 = 0.9 / 1**0.5, buffer starts at 0
  nrm = np.linalg.norm(buf, axis=1)
  alpha = nrm.max() / (nrm + 1e-8)
  np.testing.assert_allclose(aux.weights, alpha, rtol=1e-5)
  np.testing.assert_allclose(upd["a"], alpha @ buf, rtol=1e-5)
  assert upd["b"].shape == (1, 1)
  upd2, aux2 = d.update(jac, losses, aux.state)
  beta2 = 0.9 / 2 ** 0.5
  buf2 = g + beta2 * (buf - g)
  nrm2 = np.linalg.norm(buf2, axis=1)
  np.testing.assert_allclose(upd2["a"], (nrm2.max() / (nrm2 + 1e-8)) @ buf2, rtol=1e-5)


def test_log_methods_finite_at_zero_and_negative_losses():
  bad = jnp.array([0.0, -1.0, 1.0])
  f = wt.famo()
  st = f.init(3)
  (total, aux), g = jax.value_and_grad(lambda l: f.update(l, {}, st.state, step=0),
                                       has_aux=True)(bad)
  assert np.isfinite(total) and np.all(np.isfinite(g))
  state = f.after_step(jnp.array([-2.0, 0.0, 0.5]), aux.state)
  assert np.all(np.isfinite(state["logits"]))
  d = wt.db_mtl()
  jac = jnp.ones((3, 4))
  upd, aux = d.update(jac, bad, d.init(jac))
  assert np.all(np.isfinite(upd)) and np.all(np.isfinite(aux.weights))
  gn = wt.gradnorm()
  total, aux = _run(gn, bad, gn.init(3), grad_norms=jnp.ones(3))
  assert np.isfinite(total)
  total, _ = _run(gn, [1.0, 1.0, 1.0], wt.WeightingState(gn.init(3).params, aux.state),
                  grad_norms=jnp.ones(3))
  assert np.isfinite(total)
  dw = wt.dwa(window="step")
  st = dw.init(2)
  for t, l in enumerate([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]):
    _, aux = _run(dw, l, st, step=t)
    st = wt.WeightingState({}, aux.state)
    assert np.all(np.isfinite(aux.weights))
  uw = wt.uncertainty()
  (total, _), (gs, gl) = jax.value_and_grad(
    lambda p, l: uw.update(l, p, {}, step=0), argnums=(0, 1), has_aux=True)(
      uw.init(3).params, bad)
  assert np.isfinite(total) and np.all(np.isfinite(gs["log_var"])) and np.all(np.isfinite(gl))


def test_uw_nonpositive_loss_freezes_its_log_variance():
  uw = wt.uncertainty()
  s = jnp.array([0.2, -0.3, 0.1])
  losses = jnp.array([0.0, -2.0, 3.0])
  total, (gs, gl) = jax.value_and_grad(lambda p, l: uw.update(l, p, {}, step=0)[0],
                                       argnums=(0, 1))({"log_var": s}, losses)
  # Tasks 0, 1 (L <= 0): no s-gradient, s/2 left out; task 2 as in the paper.
  np.testing.assert_allclose(gs["log_var"], [0.0, 0.0, -3.0 / (2 * np.exp(0.1)) + 0.5],
                             rtol=1e-6)
  np.testing.assert_allclose(gl, 1 / (2 * np.exp(s)), rtol=1e-6)  # model gradient unchanged
  np.testing.assert_allclose(total, -2.0 / (2 * np.exp(-0.3)) + 3.0 / (2 * np.exp(0.1)) + 0.05,
                             rtol=1e-5)


def test_famo_tasks_at_their_minimum_are_left_out():
  f = wt.famo(min_losses=[0.0, 0.5, 0.0])
  st = f.init(3)
  losses = jnp.array([0.0, 0.4, 2.0])  # task 0 at its minimum, task 1 below it
  (total, aux), g = jax.value_and_grad(lambda l: f.update(l, {}, st.state, step=0),
                                       has_aux=True)(losses)
  # Only task 2 is above its minimum: weight 1 on its log, effective gradient weight 1.
  np.testing.assert_allclose(g, [0.0, 0.0, 1.0], rtol=1e-6)
  # z = 1/3 each, c = z_2 / D_2 = 1/6: total = z_2 log D_2 / c = 2 log 2.
  np.testing.assert_allclose(total, 2 * np.log(2.0), rtol=1e-5)
  two = jnp.array([1.0, 0.4, 2.0])  # tasks 0 and 2 present: effective weights sum to 1
  g2 = jax.grad(lambda l: f.update(l, {}, st.state, step=0)[0])(two)
  np.testing.assert_allclose(g2, [2 / 3, 0.0, 1 / 3], rtol=1e-5)
  none = jnp.array([0.0, 0.5, -1.0])
  (t0, _), g0 = jax.value_and_grad(lambda l: f.update(l, {}, st.state, step=0),
                                   has_aux=True)(none)
  assert float(t0) == 0.0 and np.all(np.asarray(g0) == 0.0)
  # Logit step: delta is 0 for a task at its minimum before or after the step.
  state = f.after_step(jnp.array([0.5, 0.3, 1.0]), aux.state)
  w, *_ = _famo_reference(np.zeros(3), np.zeros(3), np.zeros(3), 0, np.array([1.0, 1.0, 2.0]),
                          np.array([1.0, 1.0, 1.0]), 0.025, 1e-3)
  np.testing.assert_allclose(state["logits"], w, rtol=1e-4, atol=1e-7)


def test_db_mtl_nonpositive_loss_is_left_out_and_keeps_its_buffer():
  d = wt.db_mtl(beta=0.5)
  jac = jnp.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
  state = d.init(jac)
  _, aux = d.update(jac, jnp.array([1.0, 2.0, 4.0]), state)
  buf1 = np.asarray(aux.state["buffer"])
  upd, aux2 = d.update(jac, jnp.array([1.0, 0.0, -1.0]), aux.state)
  buf2 = np.asarray(aux2.state["buffer"])
  np.testing.assert_allclose(buf2[1:], buf1[1:])  # left-out rows kept as they are
  np.testing.assert_allclose(buf2[0], 3.0 * np.array([3.0, 4.0]) / 4 + 0.0, rtol=1e-5)
  np.testing.assert_allclose(aux2.weights, [1.0, 0.0, 0.0], rtol=1e-6)  # max over task 0 only
  np.testing.assert_allclose(upd, buf2[0], rtol=1e-5)
  zero, aux3 = d.update(jac, jnp.zeros(3), aux2.state)
  assert np.all(np.asarray(zero) == 0) and np.all(np.asarray(aux3.weights) == 0)
  g = jax.grad(wt.db_mtl_log_losses)(jnp.array([2.0, 0.0, -1.0]))
  np.testing.assert_allclose(g, [1 / (2.0 + 1e-8), 0.0, 0.0], rtol=1e-6)


def test_dwa_leaves_out_nonpositive_losses():
  w = wt.dwa(temperature=2.0, window="epoch", steps_per_epoch=2)
  st = w.init(2)
  # Task 1 has no example (loss 0) in one step of epoch 0 and in all of epoch 1.
  hist = [[1.0, 2.0], [3.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.5, 1.0]]
  got = []
  for t, l in enumerate(hist):
    _, aux = _run(w, l, st, step=t)
    st = wt.WeightingState({}, aux.state)
    got.append(np.asarray(aux.weights))
  np.testing.assert_allclose(aux.state["before_last"], [2.0, 2.0])  # epoch 0: task 1 mean of 1 step
  np.testing.assert_allclose(aux.state["last"], [1.0, 0.0])  # epoch 1: task 1 empty
  r = np.array([1.0 / 2.0, 1.0])  # task 1 empty in epoch 1: neutral ratio
  e = np.exp(r / 2.0)
  np.testing.assert_allclose(got[4], 2 * e / e.sum(), rtol=1e-6)


def test_gradnorm_leaves_out_nonpositive_losses():
  w = wt.gradnorm(alpha=1.0)
  st = w.init(3)
  n = jnp.array([1.0, 2.0, 4.0])
  # Step 0: task 2 absent (loss 0): its L(0) waits for its first positive loss.
  _, aux = w.update(jnp.array([2.0, 1.0, 0.0]), st.params, st.state, step=0, grad_norms=n)
  np.testing.assert_allclose(aux.state["initial_losses"], [2.0, 1.0, 0.0])
  np.testing.assert_array_equal(aux.state["initialized"], [True, True, False])
  total, aux2 = w.update(jnp.array([1.0, 1.0, 3.0]), st.params, aux.state, step=1,
                         grad_norms=n)
  np.testing.assert_allclose(aux2.state["initial_losses"], [2.0, 1.0, 3.0])
  ratio = np.array([0.5, 1.0, 1.0])
  target = 7 / 3 * ratio / ratio.mean()
  np.testing.assert_allclose(total, 5.0 + np.abs(np.array([1.0, 2.0, 4.0]) - target).sum(),
                             rtol=1e-5)
  # Task 1 absent now: L_grad over tasks 0 and 2 only, means over them.
  total3, _ = w.update(jnp.array([1.0, 0.0, 3.0]), st.params, aux2.state, step=2, grad_norms=n)
  ratio = np.array([0.5, 1.0])
  target = 5 / 2 * ratio / ratio.mean()
  np.testing.assert_allclose(total3, 4.0 + np.abs(np.array([1.0, 4.0]) - target).sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("name,options,extras", [
  ("equal", {}, {}), ("uw", {"parametrization": "nash_mtl"}, {}),
  ("dwa", {"window": "step"}, {}), ("rlw", {}, {}),
  ("gradnorm", {}, {"grad_norms": jnp.ones(3)}), ("famo", {}, {})])
def test_state_pytrees_survive_jit(name, options, extras):
  w = wt.make_weighting(name, **options)
  st = w.init(3, key=jax.random.key(0))
  fn = jax.jit(lambda l, p, s, t, k: w.update(l, p, s, step=t, key=k, **extras))
  _, aux = fn(jnp.array([1.0, 2.0, 3.0]), st.params, st.state, 0, jax.random.key(1))
  _, aux = fn(jnp.array([0.9, 1.5, 2.0]), st.params, aux.state, 1, jax.random.key(2))
  after = jax.jit(w.after_step)(jnp.array([0.8, 1.4, 1.9]), aux.state)
  for new in (aux.state, after):
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(st.state)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(st.state)):
      assert a.shape == b.shape and a.dtype == b.dtype
  assert aux.weights.shape == (3,)


def test_registry_errors():
  with pytest.raises(ValueError, match="valid names"):
    wt.make_weighting("nope")
  with pytest.raises(ValueError, match="valid"):
    wt.make_weighting("uw", temperature=2.0)
  with pytest.raises(ValueError, match="parametrization"):
    wt.make_weighting("uw", parametrization="kendall")
  with pytest.raises(ValueError, match="steps_per_epoch"):
    wt.make_weighting("dwa")
  with pytest.raises(ValueError, match="num_tasks"):
    wt.equal().init(0)
  with pytest.raises(ValueError, match="shape"):
    _run(wt.equal(), [[1.0, 2.0]], wt.equal().init(2))
