"""Out-of-core merging: checkpoints larger than memory, merged leaf by leaf.

:func:`merge_checkpoints` reads the pretrained leaf and the ``K`` finetuned leaves of one path
at a time (safetensors via ``safe_open``, npz one member at a time, orbax by partial restore:
:class:`jaxmtl.merging.io.LeafReader`), merges that leaf and appends it to the output
safetensors / npz file (:class:`jaxmtl.merging.io.LeafWriter`). Peak memory is about
``(K + 1)`` times the largest leaf (``3x`` for task arithmetic, which reads one task at a time),
whatever the number of leaves.

Streaming methods (exactly equal to the in-memory :mod:`jaxmtl.merging` results up to float
summation order):

* ``task_arithmetic`` / ``weight_average`` -- one pass.
* ``ties`` with ``trim_scope="tensor"`` or ``"row"`` -- a pass for the sign majority, a merge
  pass.
* ``ties`` with ``trim_scope="global"`` (official TIES, Yadav et al., arXiv 2306.01708;
  prateeksy/ties-merging ``topk_values_mask``, ``topk_rule="official"``) -- the per-task global
  top-k magnitude threshold is found *exactly* by a streaming radix select over 16-bit digits of
  the float bit patterns (``|tau|`` of a float is ordered like its unsigned bits): one pass per
  digit (2 for float32), each accumulating per-task 65,536-bin histograms leaf by leaf, the
  same quantity :func:`jaxmtl.merging.global_topk_threshold` selects in memory. Then the sign
  majority pass (official ``resolve_zero_signs``) and the merge pass.
* ``dare``, ``breadcrumbs`` (``scope`` ``"tensor"``/``"row"``), ``della`` -- per leaf through the
  in-memory method on a one-leaf tree; the PRNG key is folded with the leaf's index, so masks
  are distributed like the in-memory ones but not identical, and a zero sign sum takes the
  leaf's own majority.

Other methods (``consensus``, ``tsv``, ``iso_c``, ...) need every leaf at once:
``streaming=False`` (or ``"auto"``) loads the checkpoints and runs the in-memory method.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxmtl.merging import io

__all__ = ["merge_checkpoints", "STREAMING_METHODS", "streaming_ties_thresholds"]

STREAMING_METHODS = ("task_arithmetic", "weight_average", "ties", "dare", "breadcrumbs", "della")
_PER_LEAF = ("dare", "breadcrumbs", "della")
_CHUNK = 1 << 20  # entries per histogram chunk: bounds bincount's temporaries
_UINT = {4: np.uint32, 8: np.uint64}


def _compute_dtype(dt: np.dtype) -> np.dtype:
  return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


class _Inputs:
  """Opened pretrained + finetuned readers, validated to share leaf paths, shapes and dtypes."""

  def __init__(self, pretrained: str | os.PathLike, finetuned: Sequence[str | os.PathLike],
               exclude: Any):
    if not finetuned:
      raise ValueError("finetuned must name at least one checkpoint")
    self.pre = io.LeafReader(pretrained)
    self.fts = [io.LeafReader(p) for p in finetuned]
    keys = self.pre.keys()
    for i, r in enumerate(self.fts):
      missing, extra = set(keys) - set(r.keys()), set(r.keys()) - set(keys)
      if missing or extra:
        raise ValueError(f"finetuned[{i}] {r.path!r} differs from pretrained: missing leaves "
                         f"{sorted(missing)[:5]}, extra leaves {sorted(extra)[:5]}")
      for k in keys:
        if r.spec(k) != self.pre.spec(k):
          raise ValueError(f"leaf {k!r}: pretrained has (shape, dtype) {self.pre.spec(k)} but "
                           f"finetuned[{i}] has {r.spec(k)}")
    from jaxmtl.merging.task_vectors import _compile_exclude  # pylint: disable=g-import-not-at-top
    pats = _compile_exclude(exclude)
    self.keys = keys
    self.merged = {k: io.is_float(self.pre.spec(k)[1]) and not any(p.fullmatch(k) for p in pats)
                   for k in keys}

  def taus(self, key: str, pre: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pretrained leaf (read unless given) and the K task vectors ``theta_t - theta_0`` in the
    compute dtype."""
    pre = self.pre.read(key) if pre is None else pre
    dt = _compute_dtype(pre.dtype)
    pre_c = pre.astype(dt, copy=False)
    out = []
    for r in self.fts:
      ft = r.read(key).astype(dt, copy=False)
      ft = ft if ft.flags.writeable else ft.copy()
      out.append(np.subtract(ft, pre_c, out=ft))
    return pre, out

  def close(self) -> None:
    for r in [self.pre, *self.fts]:
      r.close()


def streaming_ties_thresholds(leaf_taus: Callable[[], Any], num_tasks: int,
                              density: float) -> np.ndarray:
  """Per-task global TIES thresholds by streaming radix select (official ``topk_rule``).

  ``leaf_taus()`` returns a fresh iterable of ``[tau_0, ..., tau_{K-1}]`` per merged leaf
  (numpy, one dtype); it is called once per 16-bit digit. With ``d`` entries per task and
  ``m = int(d * density)``, returns ``thr[t]``: the ``(m + 1)``-th largest ``|tau_t|``, so the
  kept entries are ``|tau_t| >= thr[t]``; ``-inf`` when ``m >= d`` (keep everything).
  """
  prefix = np.zeros(num_tasks, np.uint64)
  rank = None  # remaining 1-based rank from the top within the current prefix
  total, width, level = None, None, 0
  while True:
    counts = np.zeros((num_tasks, 1 << 16), np.int64)
    n_entries = 0
    for taus in leaf_taus():
      for t, tau in enumerate(taus):
        width = tau.dtype.itemsize * 8
        u = _UINT[tau.dtype.itemsize]
        # |tau|'s bits are tau's bits without the sign bit; all arithmetic in tau's own width
        # (widening every chunk to uint64 and back to intp took twice as long)
        bits = tau.reshape(-1).view(u)
        magnitude = u(np.iinfo(u).max >> 1)
        n_entries += bits.size if t == 0 else 0
        shift = u(width - 16 * (level + 1))
        for s in range(0, bits.size, _CHUNK):
          b = bits[s:s + _CHUNK] & magnitude
          if level:   # entries under the prefix found so far, then their next 16 bits
            d = b[(b >> (shift + u(16))) == u(prefix[t])] >> shift & u(0xFFFF)
          else:       # the top 16 bits
            d = b >> shift
          counts[t] += np.bincount(d if width == 32 else d.astype(np.intp), minlength=1 << 16)
    if total is None:
      if n_entries == 0:
        raise ValueError("no merged leaves: nothing to rank for global TIES")
      total = n_entries
      m = int(total * density)
      if m >= total:
        return np.full(num_tasks, -np.inf)
      rank = np.full(num_tasks, m + 1, np.int64)
    for t in range(num_tasks):
      above = np.cumsum(counts[t][::-1])  # above[j]: entries with digit >= 65535 - j
      j = int(np.searchsorted(above, rank[t]))
      digit = (1 << 16) - 1 - j
      rank[t] -= int(above[j - 1]) if j else 0
      prefix[t] = (prefix[t] << np.uint64(16)) | np.uint64(digit)
    level += 1
    if 16 * level == width:
      utype = _UINT[width // 8]
      ftype = np.float32 if width == 32 else np.float64
      return np.array([prefix[t].astype(utype).view(ftype) for t in range(num_tasks)],
                      np.float64)


def _ties_masks(taus: list[np.ndarray], opts: Mapping[str, Any],
                thr: np.ndarray | None) -> list[np.ndarray]:
  if opts["trim_scope"] == "global":
    return [np.abs(t) >= thr[i] for i, t in enumerate(taus)]
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxmtl.merging.methods import topk_masks  # pylint: disable=g-import-not-at-top
  m = topk_masks([jnp.stack(taus)], opts["density"], scope=opts["trim_scope"],
                 rule=opts["topk_rule"])[0]
  return list(np.asarray(m))


def _ties_leaf(taus: list[np.ndarray], masks: list[np.ndarray], opts: Mapping[str, Any],
               majority: float) -> np.ndarray:
  """Elect + disjoint merge of one leaf, as ``jaxmtl.merging.methods.elect_and_merge``."""
  for t, m in zip(taus, masks):
    t[~m] = 0
  if opts["sign"] == "mass":
    e = np.sign(sum(taus[1:], taus[0].copy()))
    e[e == 0] = majority
  else:
    e = np.where(sum((np.sign(t) for t in taus), np.zeros_like(taus[0])) >= 0, 1.0, -1.0)
  tot = np.zeros_like(taus[0])
  cnt = np.zeros(taus[0].shape, np.int32)
  for t in taus:
    keep = np.where(e > 0, t > 0, t < 0)
    tot += np.where(keep, t, 0)
    cnt += keep
  if opts["merge"] in ("mean", "disjoint_mean"):
    tot /= np.maximum(cnt, 1)
  return tot


_TIES_DEFAULTS = {"density": 0.2, "trim_scope": "global", "topk_rule": "official",
                  "sign": "mass", "merge": "disjoint_mean", "scaling": 1.0}


def _progress(it, total: int, desc: str, enabled: bool):
  if not enabled:
    return it
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(it, total=total, desc=desc, unit="leaf")


def merge_checkpoints(pretrained: str | os.PathLike, finetuned: Sequence[str | os.PathLike],
                      output: str | os.PathLike, *, method: str = "task_arithmetic",
                      exclude: Any = None, streaming: bool | str = "auto",
                      progress: bool = True, metadata: Mapping[str, str] | None = None,
                      **options: Any) -> dict[str, Any]:
  """Merges checkpoint files into ``output`` (``*.safetensors`` / ``*.npz``), leaf by leaf.

  Args:
    pretrained: checkpoint path (``*.safetensors``, ``*.npz`` or orbax directory).
    finetuned: ``K`` checkpoint paths with the same leaf paths, shapes and dtypes.
    output: ``*.safetensors`` or ``*.npz`` file written incrementally (or an orbax directory
      for ``streaming=False``).
    method: a :mod:`jaxmtl.merging` method name; :data:`STREAMING_METHODS` stream.
    exclude: path regex(es) of leaves copied from ``pretrained`` (non-float leaves always are).
    streaming: True (raise if ``method`` cannot stream), False (load everything), ``"auto"``.
    progress: tqdm bar over leaves for each pass.
    metadata: safetensors ``__metadata__`` of the output.
    **options: the method's keyword options (``scaling``, ``density``, ``key`` ...).

  Returns:
    report dict: ``method``, ``options``, ``streaming``, ``passes``, ``timings`` (seconds per
    phase), ``leaves`` (per path: ``shape``, ``dtype``, ``merged``, ``nonzero_fraction`` of
    ``merged - pretrained``), ``nonzero_fraction`` over all merged entries.
  """
  import jaxmtl.merging as merging  # pylint: disable=g-import-not-at-top
  if not hasattr(merging, method) or method.startswith("_"):
    raise ValueError(f"method {method!r} is not a jaxmtl.merging method; streaming methods: "
                     f"{STREAMING_METHODS}")
  can_stream = method in STREAMING_METHODS and not (
    method == "ties" and options.get("trim_scope", "global") == "global"
    and options.get("topk_rule", "official") != "official") and not (
    method == "breadcrumbs" and options.get("scope", "row") == "global")
  if streaming is True and not can_stream:
    raise ValueError(f"method {method!r} with options {options} cannot stream leaf by leaf; "
                     f"streaming methods: {STREAMING_METHODS} (global TIES with "
                     "topk_rule='official'); pass streaming=False")
  stream = can_stream if streaming == "auto" else bool(streaming)
  t_start = time.perf_counter()
  timings: dict[str, float] = {}
  inp = _Inputs(pretrained, finetuned, exclude)
  report: dict[str, Any] = {"method": method, "options": _jsonable(options),
                            "exclude": exclude, "streaming": stream, "num_tasks": len(finetuned),
                            "leaves": {}}
  try:
    if not stream:
      out_leaves = _in_memory(inp, method, exclude, options)
      timings["merge"] = time.perf_counter() - t_start
      report["passes"] = 1
      merged_fn = lambda k, pre, i: out_leaves[k]
    else:
      merged_fn, passes = _streaming_fn(inp, method, options, timings, progress)
      report["passes"] = passes
    t0 = time.perf_counter()
    specs = {k: inp.pre.spec(k) for k in inp.keys}
    if io.detect_format(output) == "orbax":
      if stream:
        raise ValueError(f"streaming output must be *.safetensors or *.npz, got {output!r}")
      io.save(output, io.unflatten({k: out_leaves[k] for k in inp.keys}))
      for i, k in enumerate(inp.keys):
        report["leaves"][k] = _leaf_stats(inp.pre.read(k), out_leaves[k], inp.merged[k])
    else:
      with io.LeafWriter(output, specs, metadata=metadata) as w:
        for i, k in _progress(enumerate(inp.keys), len(inp.keys), "merge", progress):
          pre = inp.pre.read(k)
          out = merged_fn(k, pre, i) if inp.merged[k] else pre
          report["leaves"][k] = _leaf_stats(pre, out, inp.merged[k])
          w.write(k, out)
          del out, pre
    timings["write"] = time.perf_counter() - t0
  finally:
    inp.close()
  merged = [v for v in report["leaves"].values() if v["merged"]]
  size = sum(int(np.prod(v["shape"])) for v in merged)
  report["nonzero_fraction"] = (sum(v["nonzero_fraction"] * int(np.prod(v["shape"]))
                                    for v in merged) / size) if size else 0.0
  timings["total"] = time.perf_counter() - t_start
  report["timings"] = timings
  return report


def _leaf_stats(pre: np.ndarray, out: np.ndarray, merged: bool) -> dict[str, Any]:
  nz = float(np.count_nonzero(out != pre) / max(pre.size, 1)) if merged else 0.0
  return {"shape": list(pre.shape), "dtype": str(pre.dtype), "merged": merged,
          "nonzero_fraction": nz}


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in options.items():
    if isinstance(v, (str, int, float, bool, type(None))):
      out[k] = v
    elif isinstance(v, (list, tuple)):
      out[k] = [x if isinstance(x, (str, int, float, bool)) else repr(x) for x in v]
    else:
      out[k] = repr(v)
  return out


def _in_memory(inp: _Inputs, method: str, exclude: Any,
               options: Mapping[str, Any]) -> dict[str, np.ndarray]:
  import jaxmtl.merging as merging  # pylint: disable=g-import-not-at-top
  pre = {k: inp.pre.read(k) for k in inp.keys}
  fts = [{k: r.read(k) for k in inp.keys} for r in inp.fts]
  out = getattr(merging, method)(pre, fts, exclude=exclude, **options)
  return {k: np.asarray(v) for k, v in out.items()}


def _streaming_fn(inp: _Inputs, method: str, options: Mapping[str, Any],
                  timings: dict[str, float], progress: bool):
  """Returns ``(leaf_fn(key, pre, index) -> merged leaf, number of passes over the inputs)``."""
  merged_keys = [k for k in inp.keys if inp.merged[k]]
  if method in ("task_arithmetic", "weight_average"):
    allowed = {"scaling"} if method == "task_arithmetic" else {"weights"}
    bad = set(options) - allowed
    if bad:
      raise ValueError(f"{method}: unknown options {sorted(bad)}; valid: {sorted(allowed)}")
    k_tasks = len(inp.fts)
    if method == "task_arithmetic":
      coef = np.full(k_tasks, float(options.get("scaling", 0.3)))
    else:
      w = np.asarray(options.get("weights", np.ones(k_tasks)), np.float64)
      if w.shape != (k_tasks,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {k_tasks} non-negative numbers, not all zero")
      coef = w / w.sum()

    def linear(key, pre, _):
      dt = _compute_dtype(pre.dtype)
      pre_c = pre.astype(dt, copy=False)
      acc = np.zeros(pre.shape, dt)
      for c, r in zip(coef, inp.fts):  # one finetuned leaf in memory at a time
        ft = r.read(key).astype(dt, copy=False)
        acc += dt.type(c) * (ft - pre_c) if method == "weight_average" else ft - pre_c
        del ft
      if method == "task_arithmetic":
        acc *= dt.type(coef[0])
      return (pre_c + acc).astype(pre.dtype)

    return linear, 1

  if method in _PER_LEAF:
    import jax  # pylint: disable=g-import-not-at-top
    import jaxmtl.merging as merging  # pylint: disable=g-import-not-at-top
    fn = getattr(merging, method)

    def per_leaf(key, pre, index):
      opts = dict(options)
      if opts.get("key") is not None:
        opts["key"] = jax.random.fold_in(opts["key"], index)
      fts = [{key: r.read(key)} for r in inp.fts]
      return np.asarray(fn({key: pre}, fts, **opts)[key])

    return per_leaf, 1

  # TIES
  bad = set(options) - set(_TIES_DEFAULTS)
  if bad:
    raise ValueError(f"ties: unknown options {sorted(bad)}; valid: {sorted(_TIES_DEFAULTS)}")
  opts = {**_TIES_DEFAULTS, **options}
  if not 0 < opts["density"] <= 1:
    raise ValueError(f"ties: density must be in (0, 1], got {opts['density']}")
  passes = 1
  thr = None
  if opts["trim_scope"] == "global":
    t0 = time.perf_counter()

    def leaf_taus():
      for k in _progress(merged_keys, len(merged_keys), "ties threshold", progress):
        yield inp.taus(k)[1]

    thr = streaming_ties_thresholds(leaf_taus, len(inp.fts), float(opts["density"]))
    passes += 4 if any(_compute_dtype(inp.pre.spec(k)[1]).itemsize == 8
                       for k in merged_keys) else 2
    timings["threshold"] = time.perf_counter() - t0
  majority = 0.0
  if opts["sign"] == "mass":
    t0 = time.perf_counter()
    total = 0.0
    for k in _progress(merged_keys, len(merged_keys), "ties sign", progress):
      taus = inp.taus(k)[1]
      masks = _ties_masks(taus, opts, thr)
      s = sum((np.where(m, t, 0) for t, m in zip(taus, masks)), np.zeros_like(taus[0]))
      total += float(np.sign(s).sum())
      del taus, masks, s
    majority = float(np.sign(total))
    passes += 1
    timings["sign"] = time.perf_counter() - t0

  def ties_leaf(key, pre, _):
    _, taus = inp.taus(key, pre)
    tot = _ties_leaf(taus, _ties_masks(taus, opts, thr), opts, majority)
    dt = tot.dtype
    return (pre.astype(dt, copy=False) + dt.type(opts["scaling"]) * tot).astype(pre.dtype)

  return ties_leaf, passes
