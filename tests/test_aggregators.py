"""Tests for jaxmtl.mtl.aggregators and jaxmtl.mtl.qp.

Golden values: tests/golden/aggregator_golden.npz, produced by
tests/golden/make_aggregator_golden.py from torchjd 0.18.0 (float64) and faithful re-implementations
of LibMTL's CAGrad / Aligned-MTL. Golden comparisons run in float64 (`jax.enable_x64`); the rest
runs in the default float32.
"""

import pathlib

import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxmtl.mtl import aggregators as A
from jaxmtl.mtl import qp
from jaxmtl.rng import hash_uniform

GOLDEN = np.load(pathlib.Path(__file__).with_name("golden") / "aggregator_golden.npz")
CASES = ("small", "medium", "conflict", "rankdef")
KEY = jax.random.key(0)


def _golden_aggregators(case):
  n = GOLDEN[f"{case}/J"].shape[0]
  pref = tuple(float(i) for i in range(1, n + 1))
  perms = tuple(map(tuple, GOLDEN[f"{case}/pcgrad_perms"].tolist()))
  exact = {  # name -> (aggregator, tolerance)
      "mean": (A.Mean(), 1e-6),
      "upgrad": (A.UPGrad(), 1e-6),
      "dualproj": (A.DualProj(), 1e-6),
      "upgrad_pref": (A.UPGrad(pref_vector=pref), 1e-6),
      "dualproj_pref": (A.DualProj(pref_vector=pref), 1e-6),
      "mgda": (A.MGDA(), 1e-6),
      "mgda_fw5": (A.MGDA(epsilon=1e-9, max_iters=5), 1e-6),
      "mgda_exact": (A.MGDA(solver="exact"), 1e-6),
      "imtlg": (A.IMTLG(), 1e-6),
      "pcgrad": (A.PCGrad(permutations=perms), 1e-6),
      "aligned_min": (A.AlignedMTL(), 1e-6),
      "aligned_median": (A.AlignedMTL(scale_mode="median"), 1e-6),
      "aligned_rmse": (A.AlignedMTL(scale_mode="rmse"), 1e-6),
      "libmtl_aligned": (A.AlignedMTL(convention="libmtl"), 1e-6),
      # References stop early (Clarabel defaults / SLSQP): 1e-3.
      "cagrad": (A.CAGrad(c=0.5), 1e-3),
      "cagrad_c2": (A.CAGrad(c=2.0), 1e-3),
      "libmtl_cagrad_r0": (A.CAGrad(convention="libmtl", rescale=0), 1e-3),
      "libmtl_cagrad_r1": (A.CAGrad(convention="libmtl"), 1e-3),
      "libmtl_cagrad_r2": (A.CAGrad(convention="libmtl", rescale=2), 1e-3),
  }
  return exact


@pytest.mark.parametrize("case", CASES)
def test_golden_against_references(case):
  with jax.enable_x64(True):
    j = jnp.asarray(GOLDEN[f"{case}/J"], jnp.float64)
    errors = {}
    for name, (agg, tol) in _golden_aggregators(case).items():
      update, weights, _ = agg(j)
      assert update.dtype == jnp.float64 and weights.shape == (j.shape[0],)
      errors[name] = (float(np.max(np.abs(np.asarray(update) - GOLDEN[f"{case}/{name}"]))), tol)
    n = j.shape[0]
    u = jnp.asarray(GOLDEN[f"{case}/graddrop_u"])
    errors["graddrop"] = (float(np.max(np.abs(
        A.graddrop_update(j, u) - GOLDEN[f"{case}/graddrop"]))), 1e-6)
    errors["graddrop_leak"] = (float(np.max(np.abs(A.graddrop_update(
        j, u, jnp.linspace(0.0, 0.5, n)) - GOLDEN[f"{case}/graddrop_leak"]))), 1e-6)
    for tag, kwargs in (("nash", {}), ("nash_noclip", {"max_norm": 0.0})):
      agg = A.NashMTL(**kwargs)
      state = agg.init(n)
      for step, scale in enumerate((1.0, 2.0, 1.0 / 3.0)):
        update, _, state = agg(j * scale, state=state)
        errors[f"{tag}_{step}"] = (float(np.max(np.abs(
            np.asarray(update) - GOLDEN[f"{case}/{tag}_{step}"]))), 1e-3)
  bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
  assert not bad, f"{case}: max abs error above tolerance: {bad}"


def test_float32_path_matches_golden():
  j = jnp.asarray(GOLDEN["medium/J"], jnp.float32)
  for name, agg in (("upgrad", A.UPGrad()), ("dualproj", A.DualProj()), ("mgda", A.MGDA()),
                    ("mgda_exact", A.MGDA(solver="exact")), ("imtlg", A.IMTLG()),
                    ("aligned_min", A.AlignedMTL()), ("cagrad", A.CAGrad())):
    update, weights, _ = agg(j)
    assert update.dtype == jnp.float32 and weights.dtype == jnp.float32
    ref = GOLDEN[f"medium/{name}"]
    np.testing.assert_allclose(update, ref, atol=2e-4 * np.max(np.abs(ref)), err_msg=name)


@pytest.mark.parametrize("uniform,draw", [("hash", hash_uniform), ("jax", jax.random.uniform)])
def test_graddrop_key_path_uses_uniform_draw(uniform, draw):
  j = jnp.asarray(GOLDEN["small/J"], jnp.float32)
  update, weights, state = A.GradDrop(uniform=uniform)(j, key=KEY)
  u = draw(jax.random.fold_in(KEY, 0), j.shape[1:], jnp.float32)
  np.testing.assert_allclose(update, A.graddrop_update(j, u), atol=1e-6)
  assert weights is None and state is None


def test_graddrop_rejects_unknown_uniform():
  with pytest.raises(ValueError, match="uniform must be one of"):
    A.GradDrop(uniform="philox")


# ---- properties (float32, shapes fixed to keep compilation to a few shapes) ------------------

_J = hnp.arrays(np.float32, (3, 6), elements=st.floats(-3, 3, width=32))
# No example database (no files written) and no shrinking phase (bounded run time).
_SETTINGS = hypothesis.settings(
    max_examples=12, deadline=None, derandomize=True, database=None,
    phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate))
_NON_CONFLICTING = {"upgrad": A.UPGrad(), "dualproj": A.DualProj(),
                    "mgda": A.MGDA(solver="exact")}


@_SETTINGS
@hypothesis.given(_J)
def test_non_conflicting_methods_do_not_conflict(j):
  j = jnp.asarray(j)
  scale = float(jnp.sum(j * j)) + 1e-6
  for name, agg in _NON_CONFLICTING.items():
    update, _, _ = agg(j)
    # reg_eps (1e-4 on the trace-normalised Gramian) allows a conflict of that relative size.
    assert float(jnp.min(j @ update)) >= -2e-3 * scale, name


@_SETTINGS
@hypothesis.given(_J)
def test_nash_mtl_is_the_bargaining_point_and_does_not_conflict(j):
  j = jnp.asarray(j) + 2.0 * jnp.eye(3, 6)  # full rank, as Nash-MTL's guarantee needs
  fro = float(jnp.linalg.norm(A.gramian(j)))
  for agg in (A.NashMTL(max_norm=0.0), A.NashMTL(max_norm=1.0)):
    update, weights, _ = agg(j, state=agg.init(3))
    if agg.max_norm == 0.0:
      # (G / ||G||_F + reg I) a' = 1 / a'  <=>  J d = G a = 1 / a - reg ||G||_F a, a > 0.
      np.testing.assert_allclose(j @ update, 1.0 / weights - agg.reg_eps * fro * weights,
                                 rtol=2e-3, atol=1e-5)
    assert float(jnp.min(weights)) > 0
    assert float(jnp.min(j @ update)) > 0, agg  # clipping rescales, keeps the direction


@_SETTINGS
@hypothesis.given(hnp.arrays(np.float32, (2, 6), elements=st.floats(-3, 3, width=32)))
def test_pcgrad_two_tasks_does_not_conflict(j):
  """For two tasks g_i . (g_1^PC + g_2^PC) = ||g_i||^2 - (g_1.g_2)^2 / ||g_j||^2 >= 0."""
  j = jnp.asarray(j)
  update, _, _ = A.PCGrad()(j, key=KEY)
  assert float(jnp.min(j @ update)) >= -1e-4 * (float(jnp.sum(j * j)) + 1e-6)


@_SETTINGS
@hypothesis.given(_J)
def test_mean_is_average_and_pytree_path_matches_matrix_path(j):
  j = jnp.asarray(j)
  update, _, _ = A.Mean()(j)
  np.testing.assert_allclose(update, jnp.mean(j, axis=0), atol=1e-6)
  tree = {"a": j[:, :2].reshape(3, 2, 1), "b": [j[:, 2:].reshape(3, 2, 2)]}
  for name in ("upgrad", "mgda", "imtlg", "aligned_mtl"):
    agg = A.make_aggregator(name)
    flat, w_flat, _ = agg(j)
    tree_update, w_tree, _ = agg(tree)
    # The pytree Gramian sums leaf by leaf (another float32 rounding order); IMTL-G's linear
    # solve amplifies that on near-parallel rows (hypothesis found 2e-5 relative), hence rtol.
    np.testing.assert_allclose(w_tree, w_flat, rtol=1e-4, atol=1e-5, err_msg=name)
    got = jnp.concatenate([tree_update["a"].reshape(-1), tree_update["b"][0].reshape(-1)])
    np.testing.assert_allclose(got, flat, rtol=1e-4, atol=1e-5, err_msg=name)


_SYMMETRIC = ("mean", "upgrad", "dualproj", "imtlg", "cagrad", "aligned_mtl", "nash_mtl")


@_SETTINGS
@hypothesis.given(_J, st.permutations(range(3)))
def test_symmetric_methods_are_permutation_invariant(j, perm):
  j = jnp.asarray(j) + jnp.eye(3, 6)  # keep the Gramian away from exactly singular draws
  perm = np.asarray(perm)
  for name in _SYMMETRIC + ("mgda_exact",):
    agg = A.MGDA(solver="exact") if name == "mgda_exact" else A.make_aggregator(name)
    u1, w1, _ = agg(j)
    u2, w2, _ = agg(j[perm])
    tol = 1e-3 * (1.0 + float(jnp.max(jnp.abs(u1))))
    np.testing.assert_allclose(u2, u1, atol=tol, err_msg=name)
    np.testing.assert_allclose(w2, w1[perm], atol=tol, err_msg=name)


@_SETTINGS
@hypothesis.given(hnp.arrays(np.float32, (4, 4), elements=st.floats(-2, 2, width=32)),
                  hnp.arrays(np.float32, (4,), elements=st.floats(-2, 2, width=32)))
def test_qp_solvers_satisfy_kkt(m, c):
  q = jnp.asarray(m @ m.T + 0.1 * np.eye(4, dtype=np.float32))
  c = jnp.asarray(c)
  x = qp.nonneg_qp(q, c)
  grad = q @ x + c
  tol = 1e-5 * (float(jnp.max(jnp.abs(q))) * (1 + float(jnp.max(x))) + float(jnp.max(jnp.abs(c))))
  assert float(jnp.min(x)) >= 0 and float(jnp.min(grad)) >= -tol
  assert float(jnp.max(jnp.abs(x * grad))) <= tol * (1 + float(jnp.max(x)))
  w = qp.simplex_qp(q, c)
  grad = q @ w + c
  assert abs(float(jnp.sum(w)) - 1) < 1e-5 and float(jnp.min(w)) >= 0
  level = float(jnp.min(grad))  # KKT: grad = level on the support, >= level elsewhere
  assert float(jnp.max(jnp.where(w > 1e-6, grad - level, 0.0))) <= tol
  a = qp.nash_solve(q, jnp.ones(4))
  np.testing.assert_allclose(q @ a, 1.0 / a, rtol=1e-4)


# ---- robustness: zero task, duplicate tasks (singular Gramian), all-zero Jacobian ------------

_BASE = np.random.RandomState(3).randn(3, 6).astype(np.float32)
_DEGENERATE = {
    "zero_task": np.concatenate([_BASE[:2], np.zeros((1, 6), np.float32)]),
    "duplicate": np.stack([_BASE[0], _BASE[0], _BASE[1]]),
    "opposite": np.stack([_BASE[0], -_BASE[0], _BASE[1]]),
    "all_zero": np.zeros((3, 6), np.float32),
}


@pytest.mark.parametrize("kind", sorted(_DEGENERATE))
def test_degenerate_jacobians_give_finite_documented_results(kind):
  j = jnp.asarray(_DEGENERATE[kind])
  for name, cls in A.AGGREGATORS.items():
    agg = cls()
    update, weights, _ = agg(j, state=agg.init(3), key=KEY)
    assert bool(jnp.all(jnp.isfinite(update))), (kind, name)
    if weights is not None:
      assert bool(jnp.all(jnp.isfinite(weights))), (kind, name)
    if kind == "all_zero":
      np.testing.assert_array_equal(update, np.zeros(6), err_msg=name)
  if kind == "all_zero":  # documented weights
    np.testing.assert_allclose(A.UPGrad()(j)[1], np.full(3, 1 / 3), atol=1e-6)
    np.testing.assert_allclose(A.MGDA(solver="exact")(j)[1], np.full(3, 1 / 3), atol=1e-6)
    np.testing.assert_array_equal(A.IMTLG()(j)[1], np.zeros(3))
    np.testing.assert_array_equal(A.CAGrad()(j)[1], np.zeros(3))
  if kind == "zero_task":  # the min-norm point is the zero gradient
    np.testing.assert_allclose(A.MGDA(solver="exact")(j)[0], np.zeros(6), atol=1e-6)
  if kind in ("duplicate", "opposite"):  # min-norm optimality: g_i . d >= ||d||^2 for all i
    d = A.MGDA(solver="exact")(j)[0]
    assert float(jnp.min(j @ d - d @ d)) >= -1e-4 * float(jnp.sum(j * j))


# ---- API ------------------------------------------------------------------------------------


def test_registry_and_make_aggregator_errors():
  assert set(A.AGGREGATORS) == {"mean", "upgrad", "dualproj", "mgda", "pcgrad", "imtlg",
                                "cagrad", "aligned_mtl", "nash_mtl", "graddrop"}
  assert A.make_aggregator("cagrad", c=0.4, convention="libmtl") == A.CAGrad(
      c=0.4, convention="libmtl")
  with pytest.raises(ValueError, match="valid names"):
    A.make_aggregator("gradnorm")
  with pytest.raises(ValueError, match="valid options"):
    A.make_aggregator("mgda", eps=0.1)
  with pytest.raises(ValueError, match="solver"):
    A.MGDA(solver="qp")
  with pytest.raises(ValueError, match="rescale"):
    A.CAGrad(rescale=3)
  with pytest.raises(ValueError, match="scale_mode"):
    A.AlignedMTL(scale_mode="max")
  with pytest.raises(ValueError, match="reg_eps"):
    A.UPGrad(reg_eps=0.0)
  with pytest.raises(ValueError, match="permutations"):
    A.PCGrad(permutations=((0, 0), (1, 0)))
  j = jnp.ones((3, 4))
  with pytest.raises(ValueError, match="key"):
    A.PCGrad()(j)
  with pytest.raises(ValueError, match="key"):
    A.GradDrop()(j)
  with pytest.raises(TypeError, match="Gramian"):
    A.GradDrop().weights(jnp.eye(3))
  with pytest.raises(ValueError, match="pref_vector"):
    A.UPGrad(pref_vector=(1.0, 2.0))(j)
  with pytest.raises(ValueError, match="leading axis"):
    A.gramian({"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="square"):
    A.Mean().weights(jnp.ones((3, 2)))


def test_jit_state_and_update_weights_every():
  j = jnp.asarray(_BASE)
  agg = A.NashMTL(update_weights_every=2, max_norm=0.0)
  step = jax.jit(lambda j, s: agg(j, state=s))
  state = agg.init(3)
  u0, w0, state = step(j, state)
  u1, w1, state = step(2.0 * j, state)  # reused weights (step 1 is not a multiple of 2)
  np.testing.assert_allclose(w1, w0, rtol=1e-6)
  u2, w2, state = step(2.0 * j, state)  # recomputed: weights of 2 J are w0 / 2
  np.testing.assert_allclose(w2, w0 / 2, rtol=1e-4)
  assert int(state["step"]) == 3
  g = A.gramian(j)
  np.testing.assert_allclose(g @ w0, 1.0 / w0, rtol=1e-4)  # Nash bargaining fixed point
  # PCGrad / GradDrop under jit with a key: deterministic for a given key.
  pc = jax.jit(lambda j, k: A.PCGrad()(j, key=k)[0])
  np.testing.assert_array_equal(pc(j, KEY), pc(j, KEY))
  gd = jax.jit(lambda j, k: A.GradDrop(leak=(0.1, 0.2, 0.3))(j, key=k)[0])
  np.testing.assert_array_equal(gd(j, KEY), gd(j, KEY))


def test_bf16_pytree_leaves_keep_dtype():
  tree = {"w": jnp.asarray(_BASE[:, :4].reshape(3, 2, 2), jnp.bfloat16),
          "b": jnp.asarray(_BASE[:, 4:], jnp.float32)}
  update, weights, _ = A.UPGrad()(tree)
  assert update["w"].dtype == jnp.bfloat16 and update["b"].dtype == jnp.float32
  assert update["w"].shape == (2, 2) and weights.dtype == jnp.float32


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("tasks", [1, 2, 3, 4, 5, 10, 16, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gramian_and_combine_of_large_leaves_match_numpy(tasks, dtype, rows):
  """Large leaves take the fast paths (pairwise reduce for <= 4 tasks, or <= 16 in blocks of 4
  with `rows=True`; column blocks above; unrolled row sums in `combine`): same values as
  float64 numpy."""
  rng = np.random.default_rng(tasks)
  shapes = [(64, 80), (3 * 4096,), (2 * 32768 + 16,), (7,)]
  jac = {f"l{i}": rng.standard_normal((tasks,) + s).astype(dtype) for i, s in enumerate(shapes)}
  flat = np.concatenate([v.reshape(tasks, -1).astype(np.float64) for v in jac.values()], axis=1)
  with jax.enable_x64(dtype == np.float64):
    g = np.asarray(A.gramian(jax.tree.map(jnp.asarray, jac), rows=rows), np.float64)
    w = rng.standard_normal(tasks)
    upd = A.combine(jax.tree.map(jnp.asarray, jac), jnp.asarray(w, dtype))
  tol = 1e-12 if dtype == np.float64 else 2e-5
  np.testing.assert_allclose(g, flat @ flat.T, rtol=tol, atol=tol * np.abs(flat @ flat.T).max())
  got = np.concatenate([np.asarray(upd[k], np.float64).reshape(-1) for k in jac])
  np.testing.assert_allclose(got, w @ flat, rtol=tol, atol=tol * np.abs(w @ flat).max())
  assert all(upd[k].dtype == jac[k].dtype for k in jac)
