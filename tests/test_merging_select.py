"""Global TIES at a size where the exact sample -> count -> extract selection runs.

Small problems (<= 2^20 entries per task) pull every key to the host, so the other tests never
reach the counting passes of `jaxmtl.merging.methods._select`. Here each task has ~2.4M entries
over several leaves (with ties and zeros, the cases a threshold search gets wrong), and the
eager result must equal both a numpy k-th largest and the traced (radix-select) path.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmtl.merging import methods as M
from jaxmtl.merging.methods import _select

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
      ft[k] = pre[k] + tau
    fts.append(ft)
  return pre, fts


def test_kth_largest_keys_matches_numpy_above_host_shortcut():
  pre, fts = _trees(0, 3)
  d = sum(int(np.prod(s)) for s in SHAPES.values())
  assert d > _select._SMALL                               # the counting path, not the shortcut
  k = int(d * 0.2) + 1
  keys = _select.kth_largest_keys([jnp.asarray(pre[n]) for n in SHAPES],
                                  [[jnp.asarray(ft[n]) for n in SHAPES] for ft in fts],
                                  False, k)
  for t, ft in enumerate(fts):
    mags = np.concatenate([np.abs((jnp.asarray(ft[n]) - jnp.asarray(pre[n])).reshape(-1))
                           for n in SHAPES])
    want = np.partition(mags, d - k)[d - k]
    assert keys.view(np.float32)[t] == want


def test_eager_global_ties_equals_traced_radix_path():
  pre, fts = _trees(1, 3)
  pre_j = jax.tree.map(jnp.asarray, pre)
  fts_j = [jax.tree.map(jnp.asarray, f) for f in fts]
  eager = M.ties(pre_j, fts_j, density=0.2)
  traced = jax.jit(lambda p, f: M.ties(p, f, density=0.2))(pre_j, fts_j)
  for n in SHAPES:
    np.testing.assert_allclose(np.asarray(eager[n]), np.asarray(traced[n]), rtol=0, atol=1e-7)


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
