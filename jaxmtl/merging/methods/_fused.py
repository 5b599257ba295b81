"""Per-leaf fused merge kernels: one jitted XLA program per leaf shape, no ``[T, *s]`` stack.

Each kernel takes one merged leaf's pretrained array ``[*s]`` and its ``T`` finetuned (or
task-vector) arrays ``[*s]`` and forms the task vectors inside its fusion, so a merge reads every
input once and writes the output once (the memory-bandwidth floor of ``tools/bench_merge.py``).
Compiling per leaf shape rather than one program over the whole pytree keeps compile time to a
few programs per model (a transformer has about six distinct leaf shapes) however many leaves
there are, and keeps every temporary small.

What XLA:CPU (jax 0.10) does fast, measured on the 2-core benchmark machine, and what the
kernels are written around:

* elementwise fusions of many inputs with one output (``a + l * sum(f - a for f in fs)``);
* a *variadic* reduce over a short minor axis: ``[M, 8] -> 4 x [M]`` words fuses its elementwise
  producers and runs at about the read floor, while a reduce over a long axis, or over a major
  axis, first materialises its producer (and ``bincount``/scatter, sort and ``top_k`` cost
  5-350 ns per element).

So counting entries above thresholds (:func:`code_leaf`) packs, per group of 8 consecutive
entries, 4-bit counts of ``#{|tau_t| >= edge}`` for up to 32 (task, edge) pairs into 4 uint32
words, and sums the packed words in a few widening stages (:func:`_sum_nibbles`).

Magnitudes are compared as the integer keys ``bitcast(|tau|, uint32)`` (order-preserving for
non-negative floats): XLA:CPU flushes denormal floats in comparisons, integer keys do not, so the
counting kernels, the host-side extraction (:func:`host_keys`) and the merge masks agree bit for
bit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmtl.merging.methods import diagnostics
from jaxmtl.merging.task_vectors import compute_dtype
from jaxmtl.rng import uniform as rng_uniform

__all__ = ["is_traced", "is_sharded", "linear_leaf", "ties_leaf", "signsum_leaf", "dare_leaf",
           "dare_signsum_leaf", "consensus_leaf", "code_leaf", "gap_flags", "gap_keys",
           "keys_leaf", "host_keys",
           "edges_per_task", "MAX_TASKS_PER_PASS", "Unit", "leaf_units", "run_leafwise"]

MAX_TASKS_PER_PASS = 8    # tasks counted by one code_leaf call (4 words x 8 nibbles = 32 pairs)
_WORDS = 4                # variadic-reduce operands: 4 run at the read floor, 8 about 2x slower
_GROUP = 8                # entries per group: 4-bit counts hold 0..8
_VOTE_ROW = 1024          # entries per row of the majority-vote reduce
SUB_BLOCK = 512           # consecutive entries per block of a code_leaf subsample
_COUNT_BLOCK = 1 << 14    # groups of 8 per loop step of a large leaf's code_leaf (128K entries)
_LOOP_MIN = 1 << 21       # groups from which code_leaf loops (unblocked temporaries >= 32 MB)


def sub_size(n: int, stride: int) -> int:
  """Entries of an ``n``-entry leaf that ``code_leaf(..., stride=stride)`` counts."""
  return n if stride == 1 else (n // (stride * SUB_BLOCK)) * SUB_BLOCK


def is_traced(*leaves) -> bool:
  """True when any leaf is a tracer (inside an outer ``jax.jit``/``grad``/``vmap``)."""
  return any(isinstance(x, jax.core.Tracer) for x in leaves)


def is_sharded(*leaves) -> bool:
  """True when any leaf is a ``jax.Array`` spread over more than one device."""
  for x in leaves:
    sh = getattr(x, "sharding", None)
    if sh is not None and len(sh.device_set) > 1:
      return True
  return False


def _taus(a: jax.Array, others: Sequence[jax.Array], is_tv: bool):
  dt = compute_dtype(a.dtype)
  ac = a.astype(dt)
  return ac, [o.astype(dt) if is_tv else o.astype(dt) - ac for o in others]


def _key(x: jax.Array) -> jax.Array:
  """Order-preserving integer key of ``|x|`` (float32 ``x``)."""
  return lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)


def _sum(xs):
  out = xs[0]
  for x in xs[1:]:
    out = out + x
  return out


# --------------------------------------------------------------------------- merge kernels


@functools.partial(jax.jit, static_argnames=("is_tv",))
def linear_leaf(a, others, coef, scaling, *, is_tv):
  """``theta_0 + scaling * sum_t coef_t tau_t`` for one leaf, cast to ``a.dtype``.

  Args:
    a: pretrained leaf ``[*s]``; others: ``T`` leaves ``[*s]`` (models, or task vectors when
      ``is_tv``); coef: ``[T]``; scaling: scalar.
  """
  ac, taus = _taus(a, others, is_tv)
  c = coef.astype(ac.dtype)
  return (ac + scaling * _sum([t * c[i] for i, t in enumerate(taus)])).astype(a.dtype)


def _masked(taus, thr, keep_all):
  return taus if keep_all else [jnp.where(_key(t) >= thr[i], t, jnp.zeros_like(t))
                                for i, t in enumerate(taus)]


def _elect_merge(m, majority, sign, merge, dtype):
  """Sign election + (disjoint) mean or sum over the tasks' sparsified vectors ``m``, as
  :func:`jaxmtl.merging.methods.elect_and_merge` on one leaf, with the global majority sign
  (official ``resolve_zero_signs``) given as a scalar. Also returns the mask of entries whose
  value depends on that majority (zero elected sum, non-zero entries), None without election.
  """
  mean = merge in ("mean", "disjoint_mean")
  if sign is None:
    tot = _sum(m)
    return (tot / len(m) if mean else tot), None
  if sign == "mass":
    s = _sum(m)
    pos = jnp.where(s == 0, majority > 0, s > 0)
    ambiguous = (s == 0) & (_sum([(x != 0).astype(jnp.int32) for x in m]) > 0)
  else:  # "count": majority of signs, ties -> +1 (mergekit)
    pos = _sum([jnp.sign(x).astype(jnp.int32) for x in m]) >= 0
    ambiguous = None
  keep = [jnp.where(pos, x > 0, x < 0) for x in m]
  tot = _sum([jnp.where(k, x, jnp.zeros_like(x)) for k, x in zip(keep, m)])
  if mean:
    tot = tot / jnp.maximum(_sum([k.astype(dtype) for k in keep]), 1)
  return tot, ambiguous


def _finish(a, ac, tot, ambiguous, s, scaling, mark, sign_from_out):
  """``theta_0 + scaling * tot`` cast to ``a.dtype``; with ``mark``, also what
  :func:`run_leafwise` needs for the official majority sign without another read of the inputs.

  Marked outputs hold NaN where the value depends on the majority (``ambiguous``); ``aux`` =
  (vote ``sum sign(s)`` over the other entries, NaN count, and both per row of ``_VOTE_ROW``
  consecutive entries: NaN counts and votes ``[ceil(n / _VOTE_ROW)]``, with which
  :func:`run_leafwise` redoes just the rows that hold a NaN, without another pass over the
  output).

  With ``sign_from_out`` (float32 outputs, ``scaling != 0``) entries where the update rounds
  away (``out == theta_0`` although ``s != 0``) are marked too, and then ``sign(out -
  theta_0) = sign(scaling) * sign(s)`` at every unmarked entry: the vote is read off the output
  and ``theta_0`` by a second, cheap loop (an optimisation barrier keeps XLA from recomputing the
  output from the inputs there). Otherwise the vote comes from ``s`` (that loop re-reads the
  inputs).
  """
  out = (ac + scaling * tot).astype(a.dtype)
  if not mark:
    return out, None
  bad = ambiguous | ((out == a) & (s != 0)) if sign_from_out else ambiguous
  out = jnp.where(bad, jnp.asarray(jnp.nan, out.dtype), out)
  ob = lax.optimization_barrier(out).reshape(-1)
  af = a.reshape(-1)
  nan = jnp.isnan(ob)
  if sign_from_out:   # compares, not a subtraction that could flush to zero; NaN compares false
    gt, lt = ob > af, ob < af
    flip = jnp.sign(scaling).astype(jnp.int32)
  else:
    sf = s.reshape(-1)
    gt, lt = (sf > 0) & ~nan, (sf < 0) & ~nan
    flip = jnp.int32(1)
  # two int32 operands (sign in {-1, 0, 1}, NaN flag) summed over rows of _VOTE_ROW entries by
  # one variadic reduce (its producers fused), then over the rows: exact integer sums
  vote = gt.astype(jnp.int32) - lt.astype(jnp.int32)
  nanc = nan.astype(jnp.int32)
  pad = (-ob.shape[0]) % _VOTE_ROW
  if pad:
    vote, nanc = jnp.pad(vote, (0, pad)), jnp.pad(nanc, (0, pad))
  rv, rn = lax.reduce((vote.reshape(-1, _VOTE_ROW), nanc.reshape(-1, _VOTE_ROW)),
                      (jnp.int32(0), jnp.int32(0)),
                      lambda xs, ys: (xs[0] + ys[0], xs[1] + ys[1]), (1,))
  rv = flip * rv
  return out, (jnp.sum(rv), jnp.sum(rn), rn, rv)


_MARK_ARGS = ("mark", "sign_from_out")


@functools.partial(jax.jit, static_argnames=("is_tv", "keep_all", "sign", "merge") + _MARK_ARGS)
def ties_leaf(a, others, thr, majority, scaling, *, is_tv, keep_all, sign, merge, mark,
              sign_from_out=False):
  """TIES merge of one leaf (or of gathered entries) given the per-task thresholds as keys
  ``[T]`` uint32 and the majority sign; ``mark``: see :func:`_finish`."""
  ac, taus = _taus(a, others, is_tv)
  m = _masked(taus, thr, keep_all)
  tot, amb = _elect_merge(m, majority, sign, merge, ac.dtype)
  return _finish(a, ac, tot, amb, _sum(m), scaling, mark and amb is not None, sign_from_out)


@functools.partial(jax.jit, static_argnames=("is_tv", "keep_all"))
def ties_signs(a, others, thr, *, is_tv, keep_all):
  """``sign(sum_t masked tau_t)`` per entry, int32 (the majority vote of each entry)."""
  _, taus = _taus(a, others, is_tv)
  return jnp.sign(_sum(_masked(taus, thr, keep_all))).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("is_tv", "keep_all"))
def signsum_leaf(a, others, thr, *, is_tv, keep_all):
  """``sum sign(sum_t masked tau_t)`` over one leaf (int32): the official majority-sign vote."""
  return jnp.sum(ties_signs(a, others, thr, is_tv=is_tv, keep_all=keep_all))


def _dare_masked(taus, key, index, keep_prob, rescale, uniform):
  """DARE drop + rescale of one leaf's task vectors; draws ``uniform(fold_in(key, index),
  [T, *s])`` (generator `uniform` of `jaxmtl.rng`) like :func:`jaxmtl.merging.dare`."""
  u = rng_uniform(uniform, jax.random.fold_in(key, index), (len(taus),) + taus[0].shape)
  out = []
  for t, x in enumerate(taus):
    keep = u[t] < keep_prob
    masked = jnp.where(keep, x, jnp.zeros_like(x))
    if rescale == "paper":
      masked = masked / jnp.asarray(keep_prob, x.dtype)
    elif rescale == "mergekit":   # sparse.rescale_masked: l1 norm matching, eps 1e-7
      before, after = jnp.sum(jnp.abs(x)), jnp.sum(jnp.abs(masked))
      ok = (before >= 1e-7) & (after >= 1e-7)
      masked = jnp.where(ok, masked * (before / jnp.where(ok, after, 1.0)), masked)
    out.append(masked)
  return out


@functools.partial(jax.jit, static_argnames=("is_tv", "keep_prob", "rescale", "uniform", "sign",
                                             "merge") + _MARK_ARGS)
def dare_leaf(a, others, key, index, majority, scaling, *, is_tv, keep_prob, rescale, uniform,
              sign, merge, mark, sign_from_out=False):
  """DARE (random drop, rescale, optional sign election) of leaf number ``index``."""
  ac, taus = _taus(a, others, is_tv)
  m = _dare_masked(taus, key, index, keep_prob, rescale, uniform)
  tot, amb = _elect_merge(m, majority, sign, merge, ac.dtype)
  return _finish(a, ac, tot, amb, _sum(m), scaling, mark and amb is not None, sign_from_out)


@functools.partial(jax.jit, static_argnames=("is_tv", "keep_prob", "rescale", "uniform"))
def dare_signsum_leaf(a, others, key, index, *, is_tv, keep_prob, rescale, uniform):
  _, taus = _taus(a, others, is_tv)
  m = _dare_masked(taus, key, index, keep_prob, rescale, uniform)
  return jnp.sum(jnp.sign(_sum(m)).astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("is_tv", "k", "base", "keep_all", "sign", "merge")
                   + _MARK_ARGS)
def consensus_leaf(a, others, thr, majority, lam, scaling, *, is_tv, k, base, keep_all, sign,
                   merge, mark, sign_from_out=False):
  """Consensus merging of one leaf (TALL masks against the TA or TIES multi-task vector)."""
  ac, taus = _taus(a, others, is_tv)
  if base == "task_arithmetic":
    mtl, amb, s = _sum(taus), None, None
  else:
    m = _masked(taus, thr, keep_all)
    s = _sum(m)
    mtl, amb = _elect_merge(m, majority, sign, merge, ac.dtype)
  votes = _sum([(jnp.abs(t) > jnp.abs(mtl - t) * lam).astype(jnp.int32) for t in taus])
  tot = jnp.where(votes >= k, mtl, jnp.zeros_like(mtl))
  # an entry dropped by the consensus mask (tot == 0) still casts its TIES vote
  return _finish(a, ac, tot, amb, s, scaling, mark and amb is not None, sign_from_out)


# --------------------------------------------------------------------------- counting kernels


def edges_per_task(num_tasks: int) -> int:
  """Thresholds one :func:`code_leaf` call counts per task (4 for 8 tasks, 32 for 1)."""
  if not 1 <= num_tasks <= MAX_TASKS_PER_PASS:
    raise ValueError(f"code_leaf counts 1..{MAX_TASKS_PER_PASS} tasks at once, got {num_tasks}")
  return (_WORDS * 8) // num_tasks


def _vsum(parts: list[jax.Array], g: int) -> list[jax.Array]:
  """Sums each ``[M]`` uint32 array over consecutive groups of ``g`` with one variadic reduce
  (its elementwise producers fused): ``[ceil(M / g)]`` each."""
  pad = (-parts[0].shape[0]) % g
  if pad:
    parts = [jnp.pad(p, (0, pad)) for p in parts]
  shaped = tuple(p.reshape(-1, g) for p in parts)
  return list(lax.reduce(shaped, tuple(jnp.uint32(0) for _ in shaped),
                         lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)), (1,)))


def _sum_nibbles(words: list[jax.Array]) -> jax.Array:
  """Totals ``int32 [8 * len(words)]`` of the 4-bit fields (each <= 8) of ``[M]`` uint32 words.

  Widening stages keep every sum inside its lane: nibbles -> byte lanes summed over 16 words
  (<= 128), bytes -> 16-bit lanes summed over 256 (<= 32768), then int32. The first stage is
  one variadic reduce over the words (no stacked copy of them).
  """
  m4, m8 = jnp.uint32(0x0F0F0F0F), jnp.uint32(0x00FF00FF)
  l1 = _vsum([w & m4 for w in words] + [(w >> 4) & m4 for w in words], 16)   # 2W, 4 bytes each
  x = jnp.stack(l1)                                                           # small now
  x = jnp.concatenate([x & m8, (x >> 8) & m8])                                # [4W, .]
  pad = (-x.shape[1]) % 256
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)))
  x = jnp.sum(x.reshape(x.shape[0], -1, 256), axis=2, dtype=jnp.uint32)
  x = jnp.concatenate([x & jnp.uint32(0xFFFF), x >> 16]).astype(jnp.int32)
  tot = jnp.sum(x, axis=1)                                                    # [8W]
  w = len(words)
  # nibble n of word w sits in: stage 1 row (n % 2) * W + w, byte b = n // 2; stage 2 row
  # (b % 2) * 2W + stage-1 row, half b // 2; final row (b // 2) * 4W + stage-2 row.
  order = []
  for wi in range(w):
    for n in range(8):
      r1 = (n % 2) * w + wi
      b = n // 2
      order.append((b // 2) * 4 * w + (b % 2) * 2 * w + r1)
  return tot[jnp.asarray(order)]


def _loop_block(rows: int) -> int:
  """Groups per loop step of :func:`code_leaf`: a divisor of ``rows`` near ``_COUNT_BLOCK`` when
  there is one (no second program for leftover groups), else ``_COUNT_BLOCK``."""
  for b in range(2 * _COUNT_BLOCK, _COUNT_BLOCK // 2 - 1, -1):
    if rows % b == 0:
      return b
  return _COUNT_BLOCK


def _count_groups(total, taus, edges, presence):
  """Adds the counts of ``taus`` (``T`` arrays ``[M, 8]``, groups of 8 entries) above ``edges`` to
  ``total``; with ``presence`` also returns the ``uint32 [M]`` presence words of
  :func:`code_leaf`."""
  t_n, e_n = edges.shape
  n_words = -(-t_n * e_n // 8)
  words = [None] * n_words
  for t, tau in enumerate(taus):
    key = _key(tau)
    for e in range(e_n):
      p = t * e_n + e
      bit = (key >= edges[t, e]).astype(jnp.uint32) << (4 * (p % 8))
      words[p // 8] = bit if words[p // 8] is None else words[p // 8] + bit
  # one fused pass over the inputs: a variadic reduce over each group of 8 entries
  red = list(lax.reduce(tuple(words), tuple(jnp.uint32(0) for _ in words),
                        lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)), (1,)))
  total = total + _sum_nibbles(red)[:t_n * e_n].reshape(t_n, e_n)
  if not presence:
    return total, None
  field = lambda p: (red[p // 8] >> (4 * (p % 8))) & jnp.uint32(15)
  pres = jnp.zeros(red[0].shape, jnp.uint32)
  for t in range(t_n):
    for j in range(e_n - 1):   # gap j = [edge j, edge j + 1)
      here = field(t * e_n + j) > field(t * e_n + j + 1)
      pres = pres | (here.astype(jnp.uint32) << (t * (e_n - 1) + j))
  return total, pres


@functools.partial(jax.jit, static_argnames=("is_tv", "stride", "presence", "loop"))
def code_leaf(total, a, others, edges, *, is_tv, stride, presence, loop=True):
  """Adds ``#{bitcast(|tau_t|) >= edges[t, e]}`` over one leaf to ``total``, exactly.

  Args:
    total: ``int32 [T, E]`` running counts (the caller moves them to int64 before they can wrap).
    a: pretrained leaf; others: ``T <= 8`` leaves (models, or task vectors when ``is_tv``).
    edges: ``[T, E]`` uint32 keys, ascending along ``E``, ``T * E <= 32``.
    stride: 1 counts the whole leaf; ``s > 1`` counts one block of ``SUB_BLOCK`` consecutive
      entries in every ``s`` (a subsample read at ``1/s`` of the cost; see :func:`sub_size`).
    presence: also return, per group of 8 entries, a uint32 whose bit ``t * (E - 1) + j`` says
      whether the group holds an entry of task ``t`` in ``[edges[t, j], edges[t, j + 1])``.
    loop: count large leaves block by block (below); False for sharded leaves, whose dynamic
      slices the SPMD partitioner could gather.

  Returns:
    ``(total + counts, presence uint32 [n // 8] or None, tail uint32 [T, n % 8])``: the tail
    keys (entries past the last full group, ``stride == 1`` only) are counted too and returned
    for the caller to inspect.

  Leaves of at least ``_LOOP_MIN`` groups are counted in blocks of about ``_COUNT_BLOCK`` groups
  by a loop, so the per-group words stay in cache and the temporaries stay small: unblocked, the
  100 MB embedding of a 100M model needed a 56 MB temporary, fresh pages (~14K page faults) on
  every call, and an LLM's 200M-entry embedding would need 400 MB. Smaller leaves keep the single
  program, which compiles faster (the loop costs ~0.5 s of compilation per leaf shape).
  """
  t_n, e_n = edges.shape
  n = a.size
  m = n // _GROUP
  af = a.reshape(-1)
  ofs = [o.reshape(-1) for o in others]
  nb = n // (stride * SUB_BLOCK)

  def view(x):
    if stride == 1:
      return x[:_GROUP * m].reshape(m, _GROUP)
    # whole blocks of SUB_BLOCK consecutive entries, one block in every `stride`: reads 1/stride
    # of the cache lines (single groups of 8 spread out would touch nearly all of them)
    blocks = x[:nb * stride * SUB_BLOCK].reshape(nb, stride, SUB_BLOCK)[:, 0, :]
    return blocks.reshape(-1, _GROUP)

  rows = m if stride == 1 else nb * SUB_BLOCK // _GROUP
  pres = jnp.zeros((rows,), jnp.uint32) if presence else None
  av, ovs = view(af), [view(o) for o in ofs]
  block = _loop_block(rows) if loop and stride == 1 and rows >= _LOOP_MIN else 0
  n_loop = rows // block if block else 0
  if n_loop:
    def body(i, carry):
      tot, pr = carry
      sl = lambda x: lax.dynamic_slice_in_dim(x, i * block, block)
      _, taus = _taus(sl(av), [sl(o) for o in ovs], is_tv)
      tot, p = _count_groups(tot, taus, edges, presence)
      if presence:
        pr = lax.dynamic_update_slice_in_dim(pr, p, i * block, 0)
      return tot, pr
    total, pres = lax.fori_loop(0, n_loop, body, (total, pres))
  done = n_loop * block
  if rows > done:   # the groups after the loop's blocks (all of them for small leaves)
    _, taus = _taus(av[done:], [o[done:] for o in ovs], is_tv)
    total, p = _count_groups(total, taus, edges, presence)
    if presence:
      pres = p if not done else lax.dynamic_update_slice_in_dim(pres, p, done, 0)
  if stride == 1:
    _, ttaus = _taus(af[_GROUP * m:], [o[_GROUP * m:] for o in ofs], is_tv)
    tail = jnp.stack([_key(t) for t in ttaus])
    total = total + jnp.sum(tail[:, None, :] >= edges[:, :, None], axis=2, dtype=jnp.int32)
  else:
    tail = jnp.zeros((t_n, 0), jnp.uint32)
  return total, pres, tail


@jax.jit
def gap_flags(pres, bits):
  """Packed per-task flags of the groups whose presence word has bit ``bits[t]`` set.

  Args:
    pres: ``uint32 [m]`` presence words of :func:`code_leaf`; bits: ``int32 [T]``.

  Returns:
    ``uint32 [T, ceil(m / 32)]``: bit ``l`` of word ``w`` of task ``t`` is bit ``bits[t]`` of
    ``pres[32 w + l]`` (one variadic reduce over rows of 32 words, so the host scans 1/32 of
    the words).
  """
  pad = (-pres.shape[0]) % 32
  p = jnp.pad(pres, (0, pad)).reshape(-1, 32)
  lane = jnp.arange(32, dtype=jnp.uint32)
  parts = tuple(((p >> bits[t].astype(jnp.uint32)) & jnp.uint32(1)) << lane
                for t in range(bits.shape[0]))
  red = lax.reduce(parts, tuple(jnp.uint32(0) for _ in parts),
                   lambda xs, ys: tuple(x | y for x, y in zip(xs, ys)), (1,))
  return jnp.stack(red)


@functools.partial(jax.jit, static_argnames=("is_tv",))
def gap_keys(a, others, groups, *, is_tv):
  """Keys of task ``t`` in the groups of 8 entries ``groups[t]``: ``uint32 [T, G, 8]``.

  Same arithmetic as :func:`code_leaf` (so the extracted keys match its counts bit for bit);
  ``groups`` ``int32 [T, G]`` index the ``n // 8`` full groups (padding may repeat any index).
  """
  m = a.size // _GROUP
  rows = lambda x: x.reshape(-1)[:_GROUP * m].reshape(m, _GROUP)
  ar = rows(a)
  out = []
  for t, o in enumerate(others):
    _, (tau,) = _taus(ar[groups[t]], [rows(o)[groups[t]]], is_tv)
    out.append(_key(tau))
  return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("is_tv",))
def keys_leaf(a, others, *, is_tv):
  """All keys ``bitcast(|tau_t|)`` of one leaf, ``uint32 [T, n]`` (small problems only)."""
  _, taus = _taus(a.reshape(-1), [o.reshape(-1) for o in others], is_tv)
  return jnp.stack([_key(t) for t in taus])


# --------------------------------------------------------------------------- host side


_TINY = np.float32(2.0 ** -126)


def _flush(x: np.ndarray) -> np.ndarray:
  """Denormals to zero, as XLA:CPU's arithmetic does (DAZ/FTZ)."""
  return np.where(np.abs(x) < _TINY, np.float32(0), x)


def host_keys(a: np.ndarray, o: np.ndarray, is_tv: bool) -> np.ndarray:
  """``bitcast(|tau|)`` computed on the host exactly as the kernels compute it on XLA:CPU."""
  o32 = np.asarray(o).astype(np.float32)
  if is_tv:
    d = o32
  else:
    d = _flush(_flush(o32) - _flush(np.asarray(a).astype(np.float32)))
  return np.abs(d).view(np.uint32)


# --------------------------------------------------------------------------- driver

SMALL_LEAF = 1 << 16   # merged leaves with fewer entries are packed into one array per dtype


@dataclasses.dataclass
class Unit:
  """The arrays one kernel call sees: a merged leaf, or the 1-D concatenation of small leaves
  (biases, norms: each call costs ~30 us of dispatch, more than their bytes take to read)."""
  indices: list[int]
  pre: jax.Array
  others: list[jax.Array]

  @property
  def packed(self) -> bool:
    return len(self.indices) > 1


def leaf_units(flat, pack: bool) -> list[Unit]:
  """Kernel work units for the merged leaves of ``flat`` (small leaves packed when ``pack``)."""
  merged = flat.merged_indices
  if not pack:
    return [Unit([i], flat.pre[i], flat.leaf_others(i)) for i in merged]
  units, small = [], {}
  for i in merged:
    if int(flat.pre[i].size) >= SMALL_LEAF:
      units.append(Unit([i], flat.pre[i], flat.leaf_others(i)))
    else:
      sig = (np.dtype(flat.pre[i].dtype), tuple(np.dtype(o.dtype) for o in flat.leaf_others(i)))
      small.setdefault(sig, []).append(i)
  for idx in small.values():
    if len(idx) == 1:
      units.append(Unit(idx, flat.pre[idx[0]], flat.leaf_others(idx[0])))
      continue
    cat = lambda xs: jnp.asarray(np.concatenate([np.asarray(x).reshape(-1) for x in xs]))
    units.append(Unit(idx, cat([flat.pre[i] for i in idx]),
                      [cat([o[i] for i in idx]) for o in flat.others]))
  return units


def _store(flat, out: list, unit: Unit, value: jax.Array) -> None:
  if not unit.packed:
    out[unit.indices[0]] = value
    return
  v = np.asarray(value)
  start = 0
  for i in unit.indices:
    n = int(flat.pre[i].size)
    out[i] = jnp.asarray(v[start:start + n].reshape(np.shape(flat.pre[i])))
    start += n


@functools.partial(jax.jit, donate_argnums=0)
def _scatter_set(x, idx, vals):
  return x.reshape(-1).at[idx].set(vals.astype(x.dtype)).reshape(x.shape)


def _bucket(n: int) -> int:
  """Padded length of a gather or scatter of ``n`` items (powers of two: few compiled shapes)."""
  return max(64, 1 << (n - 1).bit_length())


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([x, np.repeat(x[-1:], size - x.size)]) if size > x.size else x




def run_leafwise(flat, units, kernel, *, elect: bool, traced: bool, signsum=None,
                 entry_signs=None):
  """Runs ``kernel(unit, pre, others, majority, mark) -> (array, aux)`` on every work unit
  (``pre``/``others``: the unit's arrays, or entries gathered from them).

  Without sign election by mass (``elect``) each unit is one kernel call. With it, the
  official majority sign (``resolve_zero_signs``: the sign of ``sum sign(elected sum)`` over all
  merged entries) is needed only where an elected sum is exactly zero while some kept entries
  are not (exact cancellation; task vectors on a shared float grid do cancel, a few entries per
  million). Traced (inside an outer ``jax.jit``) a ``signsum(unit)`` pass computes the majority
  first. Eagerly the kernels run once with ``majority = +1``, mark those entries NaN and return
  the vote of the others (:func:`_finish`); then, only where NaNs came back,

  * ``entry_signs(pre, others)`` given (TIES, consensus): the entries of every row of
    ``_VOTE_ROW`` that holds a NaN are gathered (from all flagged units at once), the rows'
    votes replaced by their entries' votes, and their merged values recomputed with the
    majority and scattered back;
  * otherwise (DARE, whose masks are drawn per leaf): the flagged units' votes are recounted
    with ``signsum(unit)`` and the units recomputed.
  """
  out = list(flat.pre)
  if not units:
    return flat.unflatten(out)
  if elect and traced:
    maj = jnp.sign(_sum([signsum(u) for u in units]))
    for u in units:
      _store(flat, out, u, kernel(u, u.pre, u.others, maj, False)[0])
    return flat.unflatten(out)
  plus = jnp.int32(1)
  res = [kernel(u, u.pre, u.others, plus, elect) for u in units]
  vals = [r[0] for r in res]
  if elect:
    auxes = [r[1] for r in res]
    counts = np.asarray(jnp.stack([a[1] for a in auxes]))
    if counts.any():
      votes = np.asarray(jnp.stack([a[0] for a in auxes])).astype(np.int64)
      vote = int(votes.sum())
      bad = [i for i in range(len(units)) if counts[i]]
      diagnostics.record(fix_units=len(bad), fix_entries=int(counts.sum()))
      if entry_signs is None:
        for i in bad:   # recount the flagged units exactly, then redo them
          vote += int(signsum(units[i])) - int(votes[i])
        maj = jnp.int32(np.sign(vote))
        diagnostics.record(fix_majority=int(np.sign(vote)))
        for i in bad:
          vals[i] = kernel(units[i], units[i].pre, units[i].others, maj, False)[0]
      else:
        # every entry of the rows that hold a NaN (the kernels' per-row counts) is redone:
        # those rows' votes are taken out of the total and recounted entry by entry
        batches = {}   # same dtypes -> one gathered batch for all flagged units
        for i in bad:
          u = units[i]
          rows = np.flatnonzero(np.asarray(auxes[i][2]))
          vote -= int(np.asarray(auxes[i][3])[rows].astype(np.int64).sum())
          pos = (rows[:, None] * _VOTE_ROW + np.arange(_VOTE_ROW)).reshape(-1)
          pos = pos[pos < int(u.pre.size)]
          sig = (np.dtype(u.pre.dtype),) + tuple(np.dtype(o.dtype) for o in u.others)
          batches.setdefault(sig, []).append((i, pos))
        gathered = []
        for items in batches.values():
          n = sum(p.size for _, p in items)
          b = _bucket(n)
          take = lambda arr_of: jnp.asarray(_pad(np.concatenate(
            [np.asarray(arr_of(units[i])).reshape(-1)[p] for i, p in items]), b))
          g_pre = take(lambda u: u.pre)
          g_oth = [take(lambda u, t=t: u.others[t]) for t in range(len(units[items[0][0]].others))]
          sg = np.asarray(entry_signs(g_pre, g_oth))[:n]
          vote += int(sg.astype(np.int64).sum())
          gathered.append((items, g_pre, g_oth, n))
        maj = jnp.int32(np.sign(vote))
        diagnostics.record(fix_majority=int(np.sign(vote)))
        width = {}   # one scatter length per leaf shape: few programs to compile
        for items, *_ in gathered:
          for i, p in items:
            sh = tuple(vals[i].shape)
            width[sh] = max(width.get(sh, 0), _bucket(p.size))
        for items, g_pre, g_oth, n in gathered:
          new = np.asarray(kernel(units[items[0][0]], g_pre, g_oth, maj, False)[0])[:n]
          start = 0
          for i, p in items:
            v = new[start:start + p.size]
            start += p.size
            bk = width[tuple(vals[i].shape)]
            vals[i] = _scatter_set(vals[i], jnp.asarray(_pad(p, bk)), jnp.asarray(_pad(v, bk)))
  for u, v in zip(units, vals):
    _store(flat, out, u, v)
  return flat.unflatten(out)
