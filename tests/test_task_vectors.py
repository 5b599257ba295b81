"""Task vectors over pytrees: paths, exclusion, precision, validation, algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxmtl.merging as M


def _tree(seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {
    "encoder": {"layers_0": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), dtype),
                             "bias": jnp.asarray(rng.standard_normal(4), dtype)}},
    "head": [jnp.asarray(rng.standard_normal((4, 2)), dtype)],
    "count": jnp.asarray(seed, jnp.int32),
  }


def test_path_strings_dict_list_and_nnx():
  assert M.leaf_paths(_tree(0)) == ["count", "encoder/layers_0/bias", "encoder/layers_0/kernel",
                                    "head/0"]
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  assert M.leaf_paths(state) == ["bias", "kernel"]


def test_task_vectors_values_exclusion_and_apply_roundtrip():
  pre, ft = _tree(0), _tree(1)
  (tv,) = M.task_vectors(pre, [ft], exclude=r"head/.*")
  enc_ft, enc_pre = ft["encoder"]["layers_0"], pre["encoder"]["layers_0"]
  np.testing.assert_allclose(tv["encoder"]["layers_0"]["kernel"],
                             enc_ft["kernel"] - enc_pre["kernel"])
  assert not np.any(tv["head"][0]) and int(tv["count"]) == 0    # excluded / non-float -> zero
  back = M.apply_task_vector(pre, tv, 1.0, exclude=r"head/.*")
  np.testing.assert_allclose(back["encoder"]["layers_0"]["bias"], ft["encoder"]["layers_0"]["bias"],
                             atol=1e-6)
  np.testing.assert_array_equal(back["head"][0], pre["head"][0])
  assert int(back["count"]) == 0


def test_exclude_accepts_list_and_fullmatch():
  pre = _tree(0)
  assert M.excluded_mask(pre, [r".*bias", r"head.*"]) == [True, True, False, True]
  assert M.excluded_mask(pre, "bias") == [True, False, False, False]   # fullmatch, not search
  with pytest.raises(ValueError, match="not a valid regex"):
    M.excluded_mask(pre, "[")
  with pytest.raises(TypeError, match="regex string"):
    M.excluded_mask(pre, [3])


def test_bf16_accumulates_in_f32_and_casts_back():
  pre = {"w": jnp.full((8,), 1.0, jnp.bfloat16)}
  ft = {"w": jnp.full((8,), 1.0078125, jnp.bfloat16)}          # 1 + 2**-7: one bf16 ulp
  (tv,) = M.task_vectors(pre, [ft])
  assert tv["w"].dtype == jnp.float32
  out = M.apply_task_vector(pre, tv, 0.5)                        # 1 + 2**-8 rounds in bf16
  assert out["w"].dtype == jnp.bfloat16
  summed = M.task_arithmetic(pre, [ft] * 4, scaling=0.25)        # f32 sum, not bf16 steps
  np.testing.assert_array_equal(np.asarray(summed["w"], np.float32), 1.0078125)


def test_mismatch_errors_name_path_model_and_shapes():
  pre = _tree(0)
  bad_shape = _tree(1)
  bad_shape["encoder"]["layers_0"]["kernel"] = jnp.zeros((3, 5))
  with pytest.raises(ValueError, match=r"'encoder/layers_0/kernel'.*\(3, 4\).*finetuned\[1\]"
                                       r".*\(3, 5\)"):
    M.task_vectors(pre, [_tree(2), bad_shape])
  bad_dtype = _tree(1)
  bad_dtype["head"][0] = bad_dtype["head"][0].astype(jnp.bfloat16)
  with pytest.raises(ValueError, match=r"'head/0'.*float32.*finetuned\[0\].*bfloat16"):
    M.task_vectors(pre, [bad_dtype])
  missing = _tree(1)
  del missing["encoder"]["layers_0"]["bias"]
  with pytest.raises(ValueError, match=r"missing.*encoder/layers_0/bias"):
    M.task_vectors(pre, [missing])
  with pytest.raises(ValueError, match="at least one"):
    M.task_vectors(pre, [])
  with pytest.raises(TypeError, match="sequence"):
    M.task_vectors(pre, _tree(1))


def test_nnx_state_roundtrip():
  pre = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  ft = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(1)), nnx.Param)
  out = M.task_arithmetic(pre, [ft], scaling=1.0, exclude="bias")
  assert jax.tree.structure(out) == jax.tree.structure(pre)
  np.testing.assert_allclose(out["kernel"][...], ft["kernel"][...], atol=1e-6)
  np.testing.assert_array_equal(out["bias"][...], pre["bias"][...])


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(0, 1000), st.floats(-3, 3), st.floats(-3, 3))
def test_add_scale_apply_algebra(seed, a, b):
  pre, f1, f2 = _tree(seed), _tree(seed + 1), _tree(seed + 2)
  t1, t2 = M.task_vectors(pre, [f1, f2])
  lhs = M.apply_task_vector(pre, M.add_task_vectors([M.scale_task_vector(t1, a),
                                                     M.scale_task_vector(t2, a)]))
  rhs = M.apply_task_vector(pre, M.add_task_vectors([t1, t2]), a)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), lhs, rhs)
  (tb,) = M.task_vectors(pre, [M.apply_task_vector(pre, t1, b)])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, b * y, atol=1e-5),
               tb["encoder"], t1["encoder"])
