"""Tests for Fisher merging and RegMean: hand-computed cases, algebraic laws, FusionBench golden."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl.merging.data_merging import (diagonal_fisher, fisher_merging, input_grams, regmean,
                                         reduce_non_diagonal)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "data_merging.npz"


def _models(k=3, seed=0):
  r = np.random.default_rng(seed)
  return [{"l": {"kernel": r.normal(size=(4, 3)).astype(np.float32),
                 "bias": r.normal(size=(3,)).astype(np.float32)},
           "step": np.array(i, np.int32)} for i in range(k)]


def _fishers(k=3, seed=1):
  r = np.random.default_rng(seed)
  return [{"l": {"kernel": r.uniform(size=(4, 3)).astype(np.float32),
                 "bias": r.uniform(size=(3,)).astype(np.float32)},
           "step": np.array(0, np.int32)} for _ in range(k)]


def test_fisher_hand_computed():
  m = [{"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([3.0, 6.0], np.float32)}]
  f = [{"w": np.array([1.0, 0.0], np.float32)}, {"w": np.array([3.0, 0.0], np.float32)}]
  out = fisher_merging(m, f, normalize=False, fisher_floor=0.0 + 1e-12)
  # (1*1 + 3*3) / 4 = 2.5 ; zero Fisher -> plain average (2 + 6) / 2 = 4
  np.testing.assert_allclose(out["w"], [2.5, 4.0], rtol=1e-6)
  out = fisher_merging(m, f, normalize=False, weights=[3.0, 1.0], fisher_floor=1e-12)
  np.testing.assert_allclose(out["w"], [(3 * 1 + 3 * 3) / 6, (3 * 2 + 6) / 4], rtol=1e-6)


def test_fisher_normalized_matches_formula_and_laws():
  ms, fs = _models(), _fishers()
  out = fisher_merging(ms, fs, exclude=".*bias")
  norms = np.array([np.linalg.norm(f["l"]["kernel"]) for f in fs])  # bias excluded
  inv = 1 / (norms + 1e-6)
  c = (1 / 3) * inv / inv.sum()
  F = np.stack([f["l"]["kernel"] + 1e-6 for f in fs]) * c[:, None, None]
  W = np.stack([m["l"]["kernel"] for m in ms])
  np.testing.assert_allclose(out["l"]["kernel"], (F * W).sum(0) / F.sum(0), rtol=1e-5)
  np.testing.assert_array_equal(out["l"]["bias"], ms[0]["l"]["bias"])  # excluded -> models[0]
  assert out["step"].dtype == np.int32 and int(out["step"]) == 0
  one = fisher_merging(ms[:1], fs[:1])
  np.testing.assert_allclose(one["l"]["kernel"], ms[0]["l"]["kernel"], rtol=1e-6)
  same = fisher_merging([ms[1]] * 3, fs)
  np.testing.assert_allclose(same["l"]["kernel"], ms[1]["l"]["kernel"], rtol=1e-6)
  with pytest.raises(ValueError, match="fishers"):
    fisher_merging(ms, fs[:2])
  with pytest.raises(ValueError, match="weights"):
    fisher_merging(ms, fs, weights=[1.0, -1.0, 1.0])


def _softmax_model():
  r = np.random.default_rng(3)
  params = {"w": jnp.asarray(r.normal(size=(3, 5)), jnp.float32)}  # [classes, in]
  xs = jnp.asarray(r.normal(size=(6, 5)), jnp.float32)
  ys = jnp.asarray([0, 2, 1, 1, 0, 2])
  return params, xs, ys, lambda p, x: jax.nn.log_softmax(p["w"] @ x)


def test_diagonal_fisher_empirical_hand_computed():
  params, xs, ys, fn = _softmax_model()
  fisher = diagonal_fisher(fn, params, [(xs[:4], ys[:4]), (xs[4:], ys[4:])], empirical=True)
  w, x = np.asarray(params["w"], np.float64), np.asarray(xs, np.float64)
  expect = np.zeros_like(w)
  for xi, yi in zip(x, np.asarray(ys)):
    p = np.exp(w @ xi - np.log(np.exp(w @ xi).sum()))
    expect += np.outer(np.eye(3)[yi] - p, xi) ** 2  # d log p_y / dW = (e_y - p) x^T
  np.testing.assert_allclose(fisher["w"], expect / 6, rtol=1e-4)


def test_diagonal_fisher_sampled_converges_to_true_fisher():
  params, xs, _, fn = _softmax_model()
  fisher = diagonal_fisher(fn, params, [(xs, None)], empirical=False,
                           key=jax.random.key(0), num_samples=4000)
  w, x = np.asarray(params["w"], np.float64), np.asarray(xs, np.float64)
  expect = np.zeros_like(w)
  for xi in x:
    p = np.exp(w @ xi - np.log(np.exp(w @ xi).sum()))
    for y in range(3):
      expect += p[y] * np.outer(np.eye(3)[y] - p, xi) ** 2
  np.testing.assert_allclose(fisher["w"], expect / 6, rtol=0.1, atol=1e-3)
  with pytest.raises(ValueError, match="key"):
    diagonal_fisher(fn, params, [(xs, None)], empirical=False)


def test_regmean_is_least_squares_with_alpha_1():
  r = np.random.default_rng(4)
  xs = [r.normal(size=(20, 4)) for _ in range(3)]
  ws = [r.normal(size=(4, 2)) for _ in range(3)]
  models = [{"k": w.astype(np.float32), "b": np.full((2,), i, np.float32)}
            for i, w in enumerate(ws)]
  grams = [{"k": (x.T @ x).astype(np.float32)} for x in xs]
  out = regmean(models, grams, alpha=1.0)
  # argmin_W sum_i ||X_i W - X_i W_i||^2
  lhs = np.concatenate(xs)
  rhs = np.concatenate([x @ w for x, w in zip(xs, ws)])
  np.testing.assert_allclose(out["k"], np.linalg.lstsq(lhs, rhs, rcond=None)[0], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(out["b"], np.ones(2))  # non-kernel leaves: mean
  # alpha = 0: per-input-row average weighted by diag(G)
  out0 = regmean(models, grams, alpha=0.0)
  d = np.stack([np.diag(g["k"]) for g in grams])  # [K, in]
  expect = (d[:, :, None] * np.stack(ws)).sum(0) / d.sum(0)[:, None]
  np.testing.assert_allclose(out0["k"], expect, rtol=1e-5)
  # equal Grams -> plain average, for any alpha
  same = regmean(models, [grams[0]] * 3, alpha=0.5)
  np.testing.assert_allclose(same["k"], np.mean(ws, 0), rtol=1e-4, atol=1e-5)


def test_regmean_errors_and_3d_kernel():
  r = np.random.default_rng(5)
  models = [{"a": {"kernel": r.normal(size=(3, 2, 2)).astype(np.float32)}} for _ in range(2)]
  g = r.normal(size=(7, 3))
  grams = [{"a": {"kernel": (g.T @ g).astype(np.float32)}}] * 2  # nested form
  out = regmean(models, grams)
  assert out["a"]["kernel"].shape == (3, 2, 2)
  with pytest.raises(ValueError, match="not leaves"):
    regmean(models, [{"a/nope": np.eye(3)}] * 2)
  with pytest.raises(ValueError, match=r"grams\[0\]\['a/kernel'\] has shape"):
    regmean(models, [{"a/kernel": np.eye(2)}] * 2)
  with pytest.raises(ValueError, match="alpha"):
    regmean(models, grams, alpha=1.5)
  np.testing.assert_allclose(reduce_non_diagonal(jnp.ones((2, 2)), 0.25), [[1, .25], [.25, 1]])


def test_input_grams():
  r = np.random.default_rng(6)
  batches = [jnp.asarray(r.normal(size=(4, 2, 3)), jnp.float32) for _ in range(2)]
  cap = lambda p, b: {"l/kernel": b * p}
  g = input_grams(cap, 2.0, batches)
  x = np.concatenate([np.asarray(b).reshape(-1, 3) * 2 for b in batches])
  np.testing.assert_allclose(g["l/kernel"], x.T @ x / 16, rtol=1e-5)


def test_against_fusionbench_golden():
  """Golden values from FusionBench's merging_with_fisher_weights / merging_with_regmean_weights
  (tests/golden/make_data_merging.py, run in a scratch venv with torch + fusion-bench)."""
  if not GOLDEN.exists():
    pytest.skip("golden file missing; run tests/golden/make_data_merging.py")
  z = np.load(GOLDEN)
  K = 3
  models = [{"fc": {"kernel": z[f"w{i}"].T, "bias": z[f"b{i}"]}} for i in range(K)]
  fishers = [{"fc": {"kernel": z[f"fw{i}"].T, "bias": z[f"fb{i}"]}} for i in range(K)]
  out = fisher_merging(models, fishers, weights=list(z["coef"]))
  np.testing.assert_allclose(out["fc"]["kernel"], z["fisher_w"].T, rtol=1e-5)
  np.testing.assert_allclose(out["fc"]["bias"], z["fisher_b"], rtol=1e-5)
  grams = [{"fc/kernel": z[f"g{i}"]} for i in range(K)]
  out = regmean(models, grams, alpha=float(z["alpha"]))
  np.testing.assert_allclose(out["fc"]["kernel"], z["regmean_w"].T, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["fc"]["bias"], z["regmean_b"], rtol=1e-6)
