"""Merging methods vs. their reference implementations, plus algebraic properties.

Golden outputs come from tests/golden/make_merging_golden.py (FusionBench 0.2.33, mergekit 0.1.5,
torch 2.13.0, computed in float64 on float32 inputs). Randomised references (DARE, DELLA) are
compared given the reference's own masks.
"""

import functools
import pathlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxmtl.merging as M
from jaxmtl.merging.methods import _common, sparse
from jaxmtl.merging.methods.topk import count_greater, global_topk_threshold
from jaxmtl import rng as jrng

GOLDEN = pathlib.Path(__file__).parent / "golden" / "merging_golden.npz"
G = dict(np.load(GOLDEN))
NAMES = ["a.weight", "b.bias", "b.weight", "c.conv"]   # jax.tree_util order of the dict keys
T = 3
TOL = 1e-6


def tree(prefix):
  return {k: jnp.asarray(G[f"{prefix}/{k}"]) for k in NAMES}


PRE = tree("pre")
FTS = [tree(f"ft{t}") for t in range(T)]
TVQ = [tree(f"tvq{t}") for t in range(T)]


def assert_golden(out, name, tol=TOL):
  for k in NAMES:
    got = np.asarray(out[k], np.float64)
    want = G[f"{name}/{k}"]
    assert got.shape == want.shape and out[k].dtype == PRE[k].dtype, k
    err = np.max(np.abs(got - want))
    assert err <= tol, f"{name}/{k}: max abs diff {err:.3g}"


# ------------------------------------------------------------------------- golden comparisons

GOLDEN_CASES = {
  "weight_average": lambda: M.weight_average(PRE, FTS),
  "task_arithmetic_0.3": lambda: M.task_arithmetic(PRE, FTS, scaling=0.3),
  "ties_official_global_dismean": lambda: M.ties(PRE, FTS, density=0.2),
  "ties_official_global_sum_0.3": lambda: M.ties(PRE, FTS, density=0.2, merge="sum",
                                                 scaling=0.3),
  "ties_official_tensor_dismean": lambda: M.ties(PRE, FTS, density=0.3, trim_scope="tensor"),
  "ties_official_row_dismean": lambda: M.ties(PRE, FTS, density=0.3, trim_scope="row"),
  "tiesq_official_global_dismean": lambda: M.ties(PRE, task_vectors=TVQ, density=0.2),
  "tiesq_official_row_dismean": lambda: M.ties(PRE, task_vectors=TVQ, density=0.25,
                                               trim_scope="row"),
  "ties_mergekit": lambda: M.ties(PRE, FTS, density=0.3, trim_scope="tensor",
                                  topk_rule="mergekit"),
  "ties_mergekit_count": lambda: M.ties(PRE, FTS, density=0.3, trim_scope="tensor",
                                        topk_rule="mergekit", sign="count"),
  "breadcrumbs_mergekit": lambda: M.breadcrumbs(PRE, FTS, density=0.4, gamma=0.1,
                                                scope="tensor", scaling=0.7),
  "breadcrumbs_ties_mergekit": lambda: M.breadcrumbs(PRE, FTS, density=0.4, gamma=0.1,
                                                     scope="tensor", sign="mass"),
  "breadcrumbs_row": lambda: M.breadcrumbs(PRE, FTS, density=0.4, gamma=0.1, scope="row",
                                           scaling=0.7),
  "consensus_ta": lambda: M.consensus(PRE, FTS, k=2, tall_mask_lambda=0.4),
  "consensus_ties": lambda: M.consensus(PRE, FTS, k=2, tall_mask_lambda=0.5, base="ties"),
  "tsv": lambda: M.tsv(PRE, FTS),
  "iso_c_1.3": lambda: M.iso_c(PRE, FTS, scaling=1.3),
  "iso_cts": lambda: M.iso_cts(PRE, FTS, common_space_fraction=0.8),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_matches_reference(name):
  assert_golden(GOLDEN_CASES[name](), name)


def test_tall_masks_match_reference():
  masks = M.tall_masks(PRE, FTS, tall_mask_lambda=0.4)
  for t in range(T):
    for k in NAMES:
      np.testing.assert_array_equal(np.asarray(masks[t][k]), G[f"tall_mask{t}/{k}"])


def _masks(prefix):
  return [[jnp.asarray(G[f"{prefix}/mask{t}/{k}"]) for k in NAMES] for t in range(T)]


def _prep():
  return _common.prepare(PRE, FTS, None, None, "test")


@functools.partial(jax.jit, static_argnames=("keep_prob", "rescale", "sign"))
def _dare_given_masks(masks, scaling, *, keep_prob, rescale, sign):
  prep = _prep()
  deltas = sparse.dare_deltas_from_masks(prep, masks, keep_prob, rescale, sign, "sum")
  return _common.finish(prep, deltas, scaling)


@pytest.mark.parametrize("name,sign,scaling", [("dare_ties_mergekit", "mass", 1.0),
                                               ("dare_linear_mergekit", None, 0.5)])
def test_dare_mergekit_rescale_given_masks(name, sign, scaling):
  out = _dare_given_masks(_masks(name), scaling, keep_prob=0.6, rescale="mergekit", sign=sign)
  assert_golden(out, name)


@pytest.mark.parametrize("uniform", ["hash", "jax"])
def test_dare_draws_leaf_masks_from_the_named_generator(uniform):
  # leaf i's masks are jaxmtl.rng.uniform(uniform, fold_in(key, i), [T, *s]) < keep_prob.
  key, keep = jax.random.key(3), 0.6
  draws = [jrng.uniform(uniform, jax.random.fold_in(key, i), s.shape) < keep
           for i, s in enumerate(_prep().stacks)]
  masks = [[d[t] for d in draws] for t in range(T)]
  want = _dare_given_masks(masks, 0.3, keep_prob=keep, rescale="paper", sign="mass")
  got = M.dare(PRE, FTS, key=key, drop_rate=1 - keep, scaling=0.3, sign="mass",
               uniform=uniform)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
  with pytest.raises(ValueError, match="uniform"):
    M.dare(PRE, FTS, key=key, uniform="philox")
  with pytest.raises(ValueError, match="uniform"):
    M.della(PRE, FTS, key=key, uniform="philox")


def test_dare_paper_rescale_given_masks():
  out = _dare_given_masks(_masks("dare_paper"), 0.3, keep_prob=0.6, rescale="paper", sign=None)
  assert_golden(out, "dare_paper_0.3")


@functools.partial(jax.jit, static_argnames=("rescale", "sign", "merge"))
def _della_given_masks(masks, *, rescale, sign, merge):
  prep = _prep()
  probs = [jax.vmap(lambda x: sparse.della_keep_probs(x, 0.5, 0.2))(s) for s in prep.stacks]
  deltas = sparse.della_deltas_from_masks(prep, masks, 0.5, 0.2, rescale, sign, merge)
  return _common.finish(prep, deltas), deltas, probs


@pytest.mark.parametrize("name,sign,merge", [("della_mergekit", "mass", "mean"),
                                             ("della_linear_mergekit", None, "sum")])
def test_della_mergekit_given_masks(name, sign, merge):
  out, _, probs = _della_given_masks(_masks(name), rescale="mergekit", sign=sign, merge=merge)
  for t in range(T):
    for i, k in enumerate(NAMES):
      np.testing.assert_allclose(probs[i][t], G[f"{name}/probs{t}/{k}"], atol=1e-6)
  assert_golden(out, name)


def test_della_paper_rescale_divides_by_keep_prob():
  keeps = _masks("della_mergekit")
  _, deltas, probs = _della_given_masks(keeps, rescale="paper", sign=None, merge="sum")
  prep = _prep()
  for i in range(len(NAMES)):
    want = sum(np.where(keeps[t][i], prep.stacks[i][t], 0) / probs[i][t] for t in range(T))
    np.testing.assert_allclose(deltas[i], want, atol=1e-6)


# ------------------------------------------------------------------------- global threshold


TIE_VALUES = st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 2.5, -3.0, 1e-30, 7.0, np.inf])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.tuples(*[hnp.arrays(np.float32, s, elements=TIE_VALUES)
                   for s in [(5, 7), (13,), (3, 2, 4), ()]]), st.data())
def test_global_topk_threshold_equals_sort_with_ties(arrays, data):
  flat = np.concatenate([a.ravel() for a in arrays])
  mags = [jnp.abs(jnp.asarray(a)) for a in arrays]
  k = data.draw(st.integers(1, flat.size))
  want = np.sort(np.abs(flat))[::-1][k - 1]
  thr, n_gt = _jit_threshold_and_count(mags, k)
  assert float(thr) == want
  assert int(n_gt) == int(np.sum(np.abs(flat) > want))


@jax.jit
def _jit_threshold_and_count(mags, k):
  thr = global_topk_threshold(mags, k)
  return thr, count_greater(mags, thr)


def test_global_topk_threshold_signed_random_and_jit_and_stream():
  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal(s).astype(np.float32) for s in [(50, 7), (33,), (4, 5, 6)]]
  flat = np.sort(np.concatenate([a.ravel() for a in arrays]))[::-1]
  f = jax.jit(global_topk_threshold)
  for k in [1, 2, 17, 200, flat.size]:
    assert float(f([jnp.asarray(a) for a in arrays], k)) == flat[k - 1]
  # streamed from a callable (as for shards read from disk)
  streamed = jax.jit(lambda arrs: global_topk_threshold(lambda: iter(arrs), 200))
  assert float(streamed([jnp.asarray(a) for a in arrays])) == flat[199]
  with pytest.raises(ValueError, match="k=0"):
    global_topk_threshold(arrays, 0)


# ------------------------------------------------------------------------- properties

SHAPE_TREE = {"enc": {"kernel": (4, 3), "bias": (3,)}, "layers": [(2, 3, 2), ()]}


def _random_tree(rng, dtype=np.float32, scale=1.0):
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype), SHAPE_TREE,
                      is_leaf=lambda x: isinstance(x, tuple))


SINGLE_IDENTITY = {
  "weight_average": lambda p, f: M.weight_average(p, f),
  "task_arithmetic": lambda p, f: M.task_arithmetic(p, f, scaling=1.0),
  "ties_official": lambda p, f: M.ties(p, f, density=1.0),
  "ties_mergekit": lambda p, f: M.ties(p, f, density=1.0, trim_scope="tensor",
                                       topk_rule="mergekit"),
  "ties_row_sum": lambda p, f: M.ties(p, f, density=1.0, trim_scope="row", merge="sum"),
  "dare_p0": lambda p, f: M.dare(p, f, key=jax.random.key(0), drop_rate=0.0),
  "breadcrumbs_d1": lambda p, f: M.breadcrumbs(p, f, density=1.0),
  "della_d1": lambda p, f: M.della(p, f, key=jax.random.key(0), density=1.0),
  "consensus_k0": lambda p, f: M.consensus(p, f, k=0, scaling=1.0),
  "consensus_k1": lambda p, f: M.consensus(p, f, k=1, scaling=1.0),
  "tsv": lambda p, f: M.tsv(p, f),
}


@pytest.mark.parametrize("name", sorted(SINGLE_IDENTITY))
@settings(max_examples=3, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1))
def test_merging_one_model_returns_it(name, seed):
  rng = np.random.default_rng(seed)
  pre, ft = _random_tree(rng), _random_tree(rng)
  out = SINGLE_IDENTITY[name](pre, [ft])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out, ft)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.floats(-2, 2), st.floats(-2, 2))
def test_task_arithmetic_linear(seed, lam, c):
  rng = np.random.default_rng(seed)
  pre = _random_tree(rng)
  tvs = [_random_tree(rng) for _ in range(3)]
  scaled = [jax.tree.map(lambda x: c * x, tv) for tv in tvs]
  zero = jax.tree.map(jnp.zeros_like, pre)
  d1 = M.task_arithmetic(zero, task_vectors=tvs, scaling=lam)
  d2 = M.task_arithmetic(zero, task_vectors=scaled, scaling=lam)
  d3 = M.task_arithmetic(zero, task_vectors=tvs, scaling=1.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(c * a, b, atol=1e-5), d1, d2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(lam * a, b, atol=1e-5), d3, d1)
  both = M.task_arithmetic(pre, task_vectors=tvs[:2], scaling=lam)
  seq = M.apply_task_vector(pre, M.add_task_vectors(tvs[:2]), lam)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), both, seq)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1))
def test_ties_density_one_agreeing_signs_is_disjoint_mean(seed):
  rng = np.random.default_rng(seed)
  pre = _random_tree(rng)
  base = jax.tree.map(lambda x: jnp.abs(x) + 0.1, _random_tree(rng))
  sign = jax.tree.map(lambda x: jnp.sign(x), _random_tree(rng))
  tvs = [jax.tree.map(lambda b, s: s * b * rng.uniform(0.5, 2), base, sign) for _ in range(3)]
  out = M.ties(pre, task_vectors=tvs, density=1.0)
  want = M.apply_task_vector(pre, jax.tree.map(lambda *x: sum(x) / 3, *tvs))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out, want)


ALL = {
  "weight_average": {}, "task_arithmetic": {}, "ties": {}, "dare": {"key": jax.random.key(1)},
  "breadcrumbs": {"density": 0.5, "gamma": 0.0}, "della": {"key": jax.random.key(2)},
  "consensus": {}, "tsv": {},
  "iso_c": {}, "iso_cts": {},
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_structure_shape_dtype_and_exclude(name):
  rng = np.random.default_rng(0)
  pre = _random_tree(rng)
  pre["bf16"] = _random_tree(rng, jnp.bfloat16)       # low precision: computed in f32, cast back
  pre["step"] = jnp.asarray(7, jnp.int32)
  pre["head"] = jnp.ones((3, 2), jnp.bfloat16)
  fts = []
  for _ in range(3):
    f = jax.tree.map(lambda x: (x + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
                     if jnp.issubdtype(x.dtype, jnp.floating) else x, pre)
    fts.append(f)
  out = getattr(M, name)(pre, fts, exclude=r".*head.*", **ALL[name])
  assert jax.tree.structure(out) == jax.tree.structure(pre)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or pytest.fail(), out, pre)
  np.testing.assert_array_equal(np.asarray(out["head"], np.float32),
                                np.asarray(pre["head"], np.float32))
  assert int(out["step"]) == 7
  for a, b in [(out["enc"]["kernel"], pre["enc"]["kernel"]),
               (out["bf16"]["enc"]["kernel"], pre["bf16"]["enc"]["kernel"])]:
    assert not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("name", sorted(ALL))
def test_jit_compatible(name):
  """Every method traces under an outer jax.jit (they are jitted internally too)."""
  rng = np.random.default_rng(3)
  pre = _random_tree(rng)
  fts = [_random_tree(rng) for _ in range(2)]
  fn = getattr(M, name)
  traced = jax.jit(functools.partial(fn, **ALL[name])).trace(pre, fts)
  assert jax.tree.structure(traced.out_info) == jax.tree.structure(pre)


def test_mismatched_shape_names_path_and_model():
  pre = {"enc": {"kernel": jnp.zeros((4, 3))}}
  bad = {"enc": {"kernel": jnp.zeros((4, 2))}}
  with pytest.raises(ValueError, match=r"enc/kernel.*\(4, 3\).*finetuned\[1\].*\(4, 2\)"):
    M.ties(pre, [pre, bad])
  with pytest.raises(ValueError, match="finetuned\\[0\\].*structure"):
    M.task_arithmetic(pre, [{"enc": {"bias": jnp.zeros(3)}}])


@pytest.mark.parametrize("call,match", [
  (lambda p, f: M.ties(p, f, density=0.0), "density"),
  (lambda p, f: M.ties(p, f, trim_scope="layer"), "trim_scope"),
  (lambda p, f: M.ties(p, f, topk_rule="x"), "topk_rule"),
  (lambda p, f: M.dare(p, f, key=jax.random.key(0), drop_rate=1.0), "drop_rate"),
  (lambda p, f: M.della(p, f, key=jax.random.key(0), density=0.1, epsilon=0.2), "epsilon"),
  (lambda p, f: M.breadcrumbs(p, f, scope="global"), "scope"),
  (lambda p, f: M.task_arithmetic(p, f, exclude="("), "regex"),
  (lambda p, f: M.consensus(p, f, base="ties", ties_options={"lam": 1}), "ties_options"),
  (lambda p, f: M.consensus(p, f, k=-1), "k must"),
  (lambda p, f: M.iso_cts(p, f, common_space_fraction=1.5), "common_space_fraction"),
])
def test_bad_options_raise(call, match):
  pre = {"w": jnp.zeros((3, 3))}
  with pytest.raises(ValueError, match=match):
    call(pre, [pre])


def test_dare_requires_key_and_is_deterministic():
  rng = np.random.default_rng(4)
  pre = _random_tree(rng)
  fts = [_random_tree(rng) for _ in range(2)]
  with pytest.raises(TypeError, match="key"):
    M.dare(pre, fts)
  a = M.dare(pre, fts, key=jax.random.key(5), drop_rate=0.5)
  b = M.dare(pre, fts, key=jax.random.key(5), drop_rate=0.5)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_topk_mergekit_rule_keeps_exact_count_with_ties():
  x = [jnp.asarray([[1.0, 2.0, 2.0, 2.0, 0.5]]), jnp.asarray([[[2.0, 0.1], [3.0, 2.0]]])]
  topk = jax.jit(sparse.topk_masks, static_argnames=("density", "scope", "rule"))
  masks = topk(x, density=0.4, scope="global", rule="mergekit")   # n = int(0.4*9) = 3
  assert sum(int(m.sum()) for m in masks) == 3
  np.testing.assert_array_equal(masks[0], [[False, True, True, False, False]])
  official = topk(x, density=0.4, scope="global", rule="official")  # >= 4th largest: all 2s
  assert sum(int(m.sum()) for m in official) == 6
