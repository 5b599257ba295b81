"""Tests for out-of-core (leaf-by-leaf) merging: equality with in-memory merges, memory bound."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxmtl.merging as M
from jaxmtl.merging import io, out_of_core as ooc

SHAPES = {"enc/a/kernel": (64, 32), "enc/a/bias": (32,), "enc/b/kernel": (32, 48),
          "head/kernel": (48, 5), "step": ()}


def _models(k=3, seed=0, dtype=np.float32):
  r = np.random.default_rng(seed)
  pre = {n: r.normal(size=s).astype(dtype) for n, s in SHAPES.items() if n != "step"}
  pre["step"] = np.array(7, np.int32)
  fts = [{n: (v + 0.1 * r.normal(size=v.shape).astype(dtype)).astype(dtype)
          if n != "step" else v for n, v in pre.items()} for _ in range(k)]
  return pre, fts


def _write(tmp_path, pre, fts, ext):
  name = lambda s: tmp_path / (s if ext == "orbax" else f"{s}.{ext}")
  io.save(name("pre"), pre)
  for i, f in enumerate(fts):
    io.save(name(f"ft{i}"), f)
  return name("pre"), [name(f"ft{i}") for i in range(len(fts))]


CASES = [
  ("task_arithmetic", {"scaling": 0.4}),
  ("weight_average", {"weights": [1.0, 2.0, 3.0]}),
  ("ties", {"density": 0.3}),  # global trim: streaming radix select
  ("ties", {"density": 0.3, "merge": "sum", "scaling": 0.5}),
  ("ties", {"density": 0.2, "trim_scope": "tensor"}),
  ("ties", {"density": 0.3, "trim_scope": "row", "topk_rule": "mergekit", "sign": "count"}),
  ("breadcrumbs", {"density": 0.5, "gamma": 0.05, "scope": "tensor"}),
]


@pytest.mark.parametrize("method,opts", CASES)
@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_streaming_equals_in_memory(tmp_path, method, opts, ext):
  pre, fts = _models()
  p, f = _write(tmp_path, pre, fts, ext)
  out = tmp_path / f"out.{ext}"
  rep = ooc.merge_checkpoints(p, f, out, method=method, exclude=r"head/.*", progress=False,
                              **opts)
  assert rep["streaming"]
  got = io.load(out, nested=False)
  ref = getattr(M, method)(pre, fts, exclude=r"head/.*", **opts)
  for k in SHAPES:
    assert got[k].dtype == pre[k].dtype and got[k].shape == pre[k].shape, k
    np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=1e-6, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(got["head/kernel"], pre["head/kernel"])
  assert rep["leaves"]["head/kernel"]["merged"] is False
  assert 0 < rep["nonzero_fraction"] <= 1


def test_orbax_inputs_and_bf16_outputs(tmp_path):
  pre, fts = _models(dtype=np.float32)
  p, f = _write(tmp_path, pre, fts, "orbax")
  rep = ooc.merge_checkpoints(p, f, tmp_path / "o.safetensors", method="ties",
                              density=0.25, progress=False)
  ref = M.ties(pre, fts, density=0.25)
  got = io.load(tmp_path / "o.safetensors", nested=False)
  for k in SHAPES:
    np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=1e-6, atol=1e-6, err_msg=k)
  assert rep["passes"] == 4  # 2 radix digits + sign majority + merge
  import ml_dtypes
  bf = lambda t: {k: v.astype(ml_dtypes.bfloat16) if k != "step" else v for k, v in t.items()}
  pb, fb = _write(tmp_path, bf(pre), [bf(x) for x in fts], "safetensors")
  ooc.merge_checkpoints(pb, fb, tmp_path / "b.safetensors", method="task_arithmetic",
                        progress=False)
  ref = M.task_arithmetic(bf(pre), [bf(x) for x in fts])
  got = io.load(tmp_path / "b.safetensors", nested=False)
  assert got["enc/a/kernel"].dtype == ml_dtypes.bfloat16
  np.testing.assert_allclose(got["enc/a/kernel"].astype(np.float32),  # 1 bf16 ulp: sum order
                             np.asarray(ref["enc/a/kernel"]).astype(np.float32), rtol=8e-3)


def test_streaming_threshold_matches_global_topk():
  r = np.random.default_rng(1)
  leaves = [[r.normal(size=s).astype(np.float32) for _ in range(2)] for s in [(100,), (7, 9)]]
  leaves[0][0][:10] = 0.5  # duplicates at the threshold
  for density in (0.05, 0.3, 0.999):
    thr = ooc.streaming_ties_thresholds(lambda: iter(leaves), 2, density)
    for t in range(2):
      a = np.sort(np.concatenate([np.abs(l[t]).ravel() for l in leaves]))[::-1]
      assert thr[t] == a[int(a.size * density)]
  assert thr[1] == float(M.global_topk_threshold([np.abs(l[1]) for l in leaves],
                                                 int(a.size * 0.999) + 1))
  assert np.all(np.isneginf(ooc.streaming_ties_thresholds(lambda: iter(leaves), 2, 1.0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_threshold_signed_zeros_ties_and_float64(dtype):
  """The radix select reads |tau| off the bits without the sign bit (-0.0 is 0, -x is x) and
  runs 2 (float32) or 4 (float64) 16-bit digit passes; exact against a sort."""
  r = np.random.default_rng(2)
  for scale in (1e-3, 1.0, 1e3):
    base = [(scale * r.normal(size=n)).astype(dtype) for n in (1, 37, 500)]
    for x in base:
      x[::7] = -0.0
      x[1::5] = -x[0]
    leaves = [[x, -2 * x[::-1], x.copy()] for x in base]
    for density in (0.01, 0.2, 0.5, 0.97):
      thr = ooc.streaming_ties_thresholds(lambda: iter(leaves), 3, density)
      d = sum(x.size for x in base)
      for t in range(3):
        a = np.sort(np.abs(np.concatenate([l[t] for l in leaves])))[::-1]
        assert thr[t] == a[int(d * density)]


def test_non_streaming_methods_and_errors(tmp_path):
  pre, fts = _models()
  p, f = _write(tmp_path, pre, fts, "npz")
  rep = ooc.merge_checkpoints(p, f, tmp_path / "c.npz", method="consensus", progress=False)
  assert not rep["streaming"]
  ref = M.consensus(pre, fts)
  np.testing.assert_allclose(io.load(tmp_path / "c.npz")["enc"]["a"]["kernel"],
                             np.asarray(ref["enc/a/kernel"]), rtol=1e-6)
  with pytest.raises(ValueError, match="cannot stream"):
    ooc.merge_checkpoints(p, f, tmp_path / "c.npz", method="consensus", streaming=True)
  with pytest.raises(ValueError, match="not a jaxmtl.merging method"):
    ooc.merge_checkpoints(p, f, tmp_path / "c.npz", method="nope")
  with pytest.raises(ValueError, match="valid: \\['density'"):
    ooc.merge_checkpoints(p, f, tmp_path / "c.npz", method="ties", dens=0.2, progress=False)
  bad = dict(fts[1])
  bad["enc/a/bias"] = np.zeros((33,), np.float32)
  io.save(tmp_path / "bad.npz", bad)
  with pytest.raises(ValueError, match="enc/a/bias"):
    ooc.merge_checkpoints(p, [f[0], tmp_path / "bad.npz"], tmp_path / "c.npz")


def test_dare_per_leaf_key(tmp_path):
  pre, fts = _models()
  p, f = _write(tmp_path, pre, fts, "npz")
  rep = ooc.merge_checkpoints(p, f, tmp_path / "d.npz", method="dare", key=jax.random.key(0),
                              drop_rate=0.5, progress=False)
  # each task keeps ~half; averaged over 3 tasks most entries still move
  assert 0.6 < rep["nonzero_fraction"] < 1.0


_MEM_SCRIPT = r"""
import json, resource, sys
from jaxmtl.merging import out_of_core as ooc
d, ext, method, stream = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
opts = {"scaling": 0.5} if method == "task_arithmetic" else {"density": 0.2}
def hwm():  # peak RSS in bytes since the last reset (VmHWM), else ru_maxrss
  try:
    with open("/proc/self/status") as f:
      return 1024 * int(next(l for l in f if l.startswith("VmHWM")).split()[1])
  except OSError:
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize()
try:  # reset the peak so that import-time transients do not hide the merge's peak
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
except OSError:
  pass
before = rss()
ooc.merge_checkpoints(f"{d}/pre.{ext}", [f"{d}/ft{i}.{ext}" for i in range(3)], f"{d}/out.{ext}",
                      method=method, streaming=stream, progress=False, **opts)
print(json.dumps(hwm() - before))
"""


def test_peak_memory_is_bounded_by_leaves_not_checkpoints(tmp_path):
  """6 leaves of 8 MiB, K=3: 4 x 48 MiB of checkpoints; peak growth ~ a few leaves."""
  r = np.random.default_rng(0)
  leaf = (1024, 2048)
  leaf_bytes = 4 * leaf[0] * leaf[1]
  pre = {f"l{i}/kernel": r.standard_normal(leaf, dtype=np.float32) for i in range(6)}
  io.save(tmp_path / "pre.safetensors", pre)
  io.save(tmp_path / "pre.npz", pre)
  for t in range(3):
    ft = {k: v + np.float32(0.01) * r.standard_normal(leaf, dtype=np.float32)
          for k, v in pre.items()}
    io.save(tmp_path / f"ft{t}.safetensors", ft)
    io.save(tmp_path / f"ft{t}.npz", ft)
  del pre, ft
  total = 4 * 6 * leaf_bytes

  def growth(ext, method, stream):
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(tmp_path), ext, method,
                          "1" if stream else "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

  overhead = 16 * 2**20
  g = growth("safetensors", "task_arithmetic", True)
  assert g < (3 + 2) * leaf_bytes + overhead < total / 2, (g, total)
  g = growth("npz", "ties", True)  # global TIES: K task vectors + masks/election temporaries
  assert g < (2 * 3 + 4) * leaf_bytes + overhead, (g, total)
  g = growth("npz", "task_arithmetic", False)  # the in-memory path holds everything: the
  assert g > total, (g, total, list(tmp_path.iterdir()))  # measurement sees loaded checkpoints
