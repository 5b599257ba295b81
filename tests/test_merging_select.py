"""Global TIES at a size where the exact sample -> count -> extract selection runs.

Small problems (<= 2^20 entries per task) pull every key to the host, so the other tests never
reach the counting passes of `jaxmtl.merging.methods._select`. Here each task has ~2.4M entries
over several leaves (with ties and zeros, the cases a threshold search gets wrong), and the
eager result must equal both a numpy k-th largest and the traced (radix-select) path.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl.merging import methods as M
from jaxmtl.merging.methods import _fused, _select

SHAPES = {"a": (1024, 1536), "b": (512, 1024), "c": (300, 700), "bias": (1536,)}


def _trees(seed: int, tasks: int):
  rng = np.random.default_rng(seed)
  pre = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  fts = []
  for t in range(tasks):
    ft = {}
    for k, s in SHAPES.items():
      tau = rng.standard_normal(s).astype(np.float32) * 0.01
      tau.reshape(-1)[:: 97] = 0.0                      # exact zeros
      tau.reshape(-1)[5::89] = np.float32(0.004)        # many equal magnitudes (ties)
      tau.reshape(-1)[7::101] = np.float32([0.03, -0.03][t] if t < 2 else 0.0)  # cancel
      ft[k] = pre[k] + tau
    fts.append(ft)
  return pre, fts


@pytest.mark.parametrize("tasks,is_tv", [(3, False), (8, True)])
def test_kth_largest_keys_matches_numpy_above_host_shortcut(tasks, is_tv):
  from jaxmtl.merging.methods import diagnostics
  pre, fts = _trees(0, tasks)
  d = sum(int(np.prod(s)) for s in SHAPES.values())
  assert d > _select._SMALL                               # the counting path, not the shortcut
  k = int(d * 0.2) + 1
  others = [[jnp.asarray(ft[n] - pre[n] if is_tv else ft[n]) for n in SHAPES] for ft in fts]
  with diagnostics.collect() as stats:
    keys = _select.kth_largest_keys([jnp.asarray(pre[n]) for n in SHAPES], others, is_tv, k)
  assert stats.get("extractions", 0) >= 1 and "extract_mismatch" not in stats, stats
  for t, ft in enumerate(fts):
    mags = np.concatenate([np.abs(np.asarray(o).reshape(-1) if is_tv else
                                  (np.asarray(o) - jnp.asarray(pre[n])).reshape(-1))
                           for n, o in zip(SHAPES, others[t])])
    want = np.partition(mags, d - k)[d - k]
    assert keys.view(np.float32)[t] == want


def test_code_leaf_loop_equals_one_block(monkeypatch):
  """Large leaves are counted block by block in a loop: loop blocks, leftover groups and the tail
  past the last group of 8 give exactly the counts and presence words of the unblocked kernel.
  (Thresholds shrunk so a small leaf takes the loop; its length is new to the jit cache.)"""
  monkeypatch.setattr(_fused, "_LOOP_MIN", 64)
  monkeypatch.setattr(_fused, "_COUNT_BLOCK", 16)
  rows = 67                                   # prime: no divisor in [8, 32], so 4 blocks + 3
  assert _fused._loop_block(rows) == 16 and _fused._loop_block(96) == 32
  n = rows * 8 + 3                            # ... and 3 tail entries past the last group
  rng = np.random.default_rng(5)
  a = jnp.asarray(rng.standard_normal(n).astype(np.float32))
  others = [a + jnp.asarray(rng.standard_normal(n).astype(np.float32) * 0.01) for _ in range(8)]
  edges = np.sort(rng.uniform(0.003, 0.02, (8, 4)).astype(np.float32), axis=1)
  edges = jnp.asarray(edges.view(np.uint32))
  zero = jnp.zeros((8, 4), jnp.int32)
  kw = dict(is_tv=False, stride=1, presence=True)
  looped = _fused.code_leaf(zero, a, others, edges, loop=True, **kw)
  jaxpr = str(jax.make_jaxpr(lambda *x: _fused.code_leaf(*x, loop=True, **kw))(
    zero, a, others, edges))
  assert "scan" in jaxpr or "while" in jaxpr   # the loop path ran
  single = _fused.code_leaf(zero, a, others, edges, loop=False, **kw)
  for x, y in zip(looped, single):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  keys = np.abs(np.stack([np.asarray(o) - np.asarray(a) for o in others])).view(np.uint32)
  want = (keys[:, None, :] >= np.asarray(edges)[:, :, None]).sum(-1)
  np.testing.assert_array_equal(np.asarray(looped[0]), want)
  groups = keys[:, :rows * 8].reshape(8, rows, 8)
  e = np.asarray(edges)
  for t in (0, 7):                            # presence bit of gap 1 of tasks 0 and 7
    inside = ((groups[t] >= e[t, 1]) & (groups[t] < e[t, 2])).any(-1)
    np.testing.assert_array_equal((np.asarray(looped[1]) >> (t * 3 + 1)) & 1, inside)


def test_set_bits_lists_every_set_bit_per_row():
  rng = np.random.default_rng(3)
  words = (rng.integers(0, 2**32, (4, 50), dtype=np.uint64)
           * (rng.random((4, 50)) < 0.2)).astype(np.uint32)
  words[1, 7], words[2] = 0xFFFFFFFF, 0
  words[3, 0] = 0x80000001                      # lanes 0 and 31
  got = _select._set_bits(words)
  for r in range(4):
    want = [32 * w + l for w in range(50) for l in range(32) if (int(words[r, w]) >> l) & 1]
    np.testing.assert_array_equal(got[r], want)
  assert got[2].size == 0 and got[3][:2].tolist() == [0, 31]


def test_gap_flags_and_gap_keys_by_hand():
  pres = np.zeros(70, np.uint32)                 # 70 groups -> 3 flag words per task
  pres[[0, 33, 69]] = 1 << 2                     # task 0 watches bit 2
  pres[[5, 33]] |= 1 << 4                        # task 1 watches bit 4
  flags = np.asarray(_fused.gap_flags(jnp.asarray(pres), jnp.asarray([2, 4], jnp.int32)))
  assert flags.shape == (2, 3)
  assert flags[0].tolist() == [1, 2, 1 << 5] and flags[1].tolist() == [1 << 5, 2, 0]
  a = np.arange(20, dtype=np.float32)            # 2 full groups + a 4-entry tail
  o = [a + np.float32(0.5), a - np.arange(20, dtype=np.float32)]
  keys = np.asarray(_fused.gap_keys(jnp.asarray(a), [jnp.asarray(x) for x in o],
                                    jnp.asarray([[1, 0], [0, 0]], jnp.int32), is_tv=False))
  assert keys.shape == (2, 2, 8)
  np.testing.assert_array_equal(keys[0, 0].view(np.float32), np.full(8, 0.5, np.float32))
  np.testing.assert_array_equal(keys[1, 0].view(np.float32), np.arange(8, dtype=np.float32))


@pytest.mark.parametrize("scaling", [1.0, -0.7])
def test_eager_global_ties_equals_traced_radix_path(scaling):
  """The eager path (NaN marks, rows redone with the majority) equals the traced one, also
  with a negative scaling (the vote is then read off the output with its sign flipped)."""
  from jaxmtl.merging.methods import diagnostics
  pre, fts = _trees(1, 3)
  pre_j = jax.tree.map(jnp.asarray, pre)
  fts_j = [jax.tree.map(jnp.asarray, f) for f in fts]
  with diagnostics.collect() as stats:
    eager = M.ties(pre_j, fts_j, density=0.2, scaling=scaling)
  assert stats.get("fix_entries", 0) > 0, stats   # exact cancellations: the fix-up path ran
  traced = jax.jit(lambda p, f: M.ties(p, f, density=0.2, scaling=scaling))(pre_j, fts_j)
  # a wrong majority moves the cancelled entries by ~0.02; a scaling != 1 may round the last
  # bit differently in the two programs (values up to ~5: one ulp is 4.8e-7)
  atol = 1e-7 if scaling == 1.0 else 1e-6
  for n in SHAPES:
    np.testing.assert_allclose(np.asarray(eager[n]), np.asarray(traced[n]), rtol=0, atol=atol)


def test_diagnostics_are_collected_only_when_asked():
  from jaxmtl.merging.methods import diagnostics
  pre, fts = _trees(2, 2)
  pre_j = jax.tree.map(jnp.asarray, pre)
  fts_j = [jax.tree.map(jnp.asarray, f) for f in fts]
  with diagnostics.collect() as stats:
    M.ties(pre_j, fts_j, density=0.2)
  assert stats.get("full_passes", 0) >= 1
  with diagnostics.collect() as other:
    pass
  assert other == {}
  M.ties(pre_j, fts_j, density=0.2)          # outside collect(): nothing recorded anywhere
  assert stats.get("full_passes", 0) >= 1 and other == {}
