"""Checkpoint I/O for merging: nested-dict pytrees <-> safetensors, npz and orbax.

A *flat* checkpoint is a ``dict[str, np.ndarray]`` whose keys are leaf paths joined by ``/``
(``"blocks/0/attn/query/kernel"``); a *nested* checkpoint is the same tree as nested dicts with
string keys. :func:`flatten` / :func:`unflatten` convert between them (Hugging Face files join
with ``.``; pass ``sep="."``).

Formats, chosen by :func:`detect_format` from the path:

* ``*.safetensors`` -- ``safetensors.numpy.save_file`` / ``load_file``; lazy per-leaf reads
  (:class:`LeafReader`) parse the header and read one tensor's byte range (not ``safe_open``,
  whose file mapping keeps touched pages resident); incremental writes with
  :class:`LeafWriter`, which writes the header first (offsets follow from the known shapes)
  and then each leaf in turn.
* ``*.npz`` -- ``np.savez`` layout (one ``<key>.npy`` member per leaf); lazy reads open one
  member at a time, incremental writes stream one member at a time.
* a directory -- an orbax ``PyTreeCheckpointer`` checkpoint. ``load(path, target=abstract)``
  restores onto the shardings of an abstract target (``jax.ShapeDtypeStruct`` leaves with
  ``sharding``); a single leaf is restored with a partial abstract target.

Every load checks for NaN/inf and raises ``ValueError`` naming the offending leaf paths.

Hugging Face converters (:data:`CLIP_VISION_RULES`, :data:`GPT2_RULES`) are tables of
:class:`Rule` -- an HF key template, target path template(s) and a layout transform -- so they can
be retargeted to other parameter names by editing the table. See ``docs/merging_io.md`` for the
target layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

PyTree = Any
Flat = dict[str, np.ndarray]
_ML_FLOATS = ("bfloat16", "float8_", "float6_", "float4_")  # ml_dtypes floats (not numpy's)

__all__ = [
  "flatten", "unflatten", "check_finite", "is_float", "detect_format", "load", "save", "LeafReader",
  "open_leaves", "LeafWriter", "Rule", "CLIP_VISION_RULES", "GPT2_RULES", "from_hf", "to_hf",
]

# ----------------------------------------------------------------------------- flat <-> nested


def flatten(tree: Mapping[str, Any], sep: str = "/") -> Flat:
  """Nested dict (str keys; lists/tuples allowed, indexed ``0, 1, ...``) -> flat dict."""
  out: Flat = {}

  def rec(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      items = node.items()
    elif isinstance(node, (list, tuple)):
      items = ((str(i), v) for i, v in enumerate(node))
    else:
      out[prefix] = node
      return
    for k, v in items:
      if not isinstance(k, str):
        raise ValueError(f"key {k!r} under {prefix or '<root>'!r} is not a string; checkpoint "
                         "trees must be nested dicts with str keys")
      if sep in k:
        raise ValueError(f"key {k!r} under {prefix or '<root>'!r} contains the separator {sep!r}")
      rec(v, f"{prefix}{sep}{k}" if prefix else k)

  rec(tree, "")
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Flat dict with ``sep``-joined keys -> nested dict."""
  root: dict[str, Any] = {}
  for key, v in flat.items():
    parts = key.split(sep)
    node = root
    for i, p in enumerate(parts[:-1]):
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"key {key!r}: {sep.join(parts[:i + 1])!r} is both a leaf and a prefix")
    if parts[-1] in node:
      raise ValueError(f"key {key!r} is both a leaf and a prefix of other keys")
    node[parts[-1]] = v
  return root


def check_finite(flat: Mapping[str, Any], what: str = "checkpoint") -> None:
  """Raises ValueError naming every floating leaf that holds NaN or inf."""
  bad = [k for k, v in flat.items() if is_float(np.asarray(v).dtype) and not _finite(v)]
  if bad:
    raise ValueError(f"{what} has NaN/inf values in leaves {bad[:10]}"
                     f"{f' (and {len(bad) - 10} more)' if len(bad) > 10 else ''}")


def is_float(dtype: Any) -> bool:
  """True for numpy floating/complex dtypes and ml_dtypes floats (bfloat16, float8_*)."""
  dt = np.dtype(dtype)
  return dt.kind in "fc" or dt.name.startswith(_ML_FLOATS)


def _finite(v: Any) -> bool:
  a = np.asarray(v)
  if a.dtype.itemsize < 4:  # bfloat16 / float16 / float8: check in float32
    a = a.astype(np.float32)
  return bool(np.isfinite(a).all())


# ----------------------------------------------------------------------------- whole-file I/O


def detect_format(path: str | os.PathLike) -> str:
  """``"safetensors"``, ``"npz"`` or ``"orbax"`` (a directory) from the path."""
  p = os.fspath(path)
  if p.endswith(".safetensors"):
    return "safetensors"
  if p.endswith(".npz"):
    return "npz"
  if os.path.isdir(p) or not os.path.splitext(p)[1]:
    return "orbax"
  raise ValueError(f"cannot tell the checkpoint format of {p!r}: valid are *.safetensors, "
                   "*.npz, or an orbax checkpoint directory")


def load(path: str | os.PathLike, *, target: PyTree | None = None, sep: str = "/",
         nested: bool = True, check: bool = True) -> PyTree:
  """Loads a checkpoint as a nested dict (``nested=False``: the flat dict).

  Args:
    path: ``*.safetensors``, ``*.npz`` or an orbax checkpoint directory.
    target: orbax only -- abstract pytree (``jax.ShapeDtypeStruct`` with ``sharding``) to
      restore onto; leaves come back as sharded ``jax.Array``s.
    sep: key separator of the file's flat keys (``"."`` for Hugging Face files).
    nested: return the nested dict (default) or the flat dict.
    check: raise ValueError naming the leaf paths that hold NaN/inf.
  """
  fmt = detect_format(path)
  if fmt == "orbax":
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    with ocp.PyTreeCheckpointer() as ckptr:
      if target is None:
        tree = ckptr.restore(os.fspath(os.path.abspath(path)))
      else:
        import jax  # pylint: disable=g-import-not-at-top
        args = jax.tree_util.tree_map(
          lambda s: ocp.ArrayRestoreArgs(sharding=getattr(s, "sharding", None),
                                         global_shape=s.shape, dtype=s.dtype), target)
        tree = ckptr.restore(os.fspath(os.path.abspath(path)),
                             args=ocp.args.PyTreeRestore(item=target, restore_args=args))
    flat = flatten(tree, "/")
  elif fmt == "safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    flat = load_file(os.fspath(path))
  else:
    with np.load(os.fspath(path), allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  if check:
    check_finite(flat, f"checkpoint {os.fspath(path)!r}")
  if fmt == "orbax":
    return unflatten(flat, "/") if nested else flat
  return unflatten(flat, sep) if nested else {k.replace(sep, "/"): v for k, v in flat.items()}


def save(path: str | os.PathLike, tree: PyTree, *, sep: str = "/",
         metadata: Mapping[str, str] | None = None) -> None:
  """Saves a nested dict (or a flat dict with ``/``-joined keys) of arrays.

  The format follows the path (see :func:`detect_format`); ``sep`` joins the file's keys.
  """
  fmt = detect_format(path)
  is_flat = isinstance(tree, Mapping) and not any(
    isinstance(v, (Mapping, list, tuple)) for v in tree.values())
  if fmt == "orbax":
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    with ocp.PyTreeCheckpointer() as ckptr:
      ckptr.save(os.fspath(os.path.abspath(path)), unflatten(tree) if is_flat else tree,
                 force=True)
    return
  flat = {(k.replace("/", sep) if is_flat else k): np.asarray(v)
          for k, v in (tree.items() if is_flat else flatten(tree, sep).items())}
  if fmt == "safetensors":
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.require(v, requirements="C") for k, v in flat.items()}, os.fspath(path),
              metadata=dict(metadata) if metadata else None)
  else:
    _check_npz_dtypes({k: v.dtype for k, v in flat.items()})
    np.savez(os.fspath(path), **flat)


def _check_npz_dtypes(dtypes: Mapping[str, np.dtype]) -> None:
  bad = [k for k, dt in dtypes.items() if dt.kind == "V" or dt.name.startswith(_ML_FLOATS)]
  if bad:
    raise ValueError(f"leaves {bad[:5]} have dtypes (bfloat16/float8) that npz cannot store; "
                     "use *.safetensors or an orbax directory")


# ----------------------------------------------------------------------------- lazy leaf I/O

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


class LeafReader:
  """Reads one leaf at a time from a checkpoint without loading the rest.

  ``keys`` are ``/``-joined paths (``sep`` in the file is translated); ``spec(key)`` gives
  ``(shape, dtype)`` from the file's header / metadata; ``read(key)`` returns one ``np.ndarray``.
  Use :func:`open_leaves` as a context manager.
  """

  def __init__(self, path: str | os.PathLike, *, sep: str = "/", check: bool = True):
    self.path = os.fspath(path)
    self.format = detect_format(self.path)
    self.check = check
    self._checked: set[str] = set()   # leaves found finite: multi-pass merges re-read them
    self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    self._names: dict[str, str] = {}
    if self.format == "safetensors":
      # Parse the header and read each tensor's byte range with a plain read: safetensors'
      # ``safe_open`` maps the whole file, and every page it touched stays resident, so peak
      # RSS grew to the file size in tests/test_out_of_core.py.
      self._f = open(self.path, "rb")
      n = int.from_bytes(self._f.read(8), "little")
      header = json.loads(self._f.read(n))
      self.metadata = header.pop("__metadata__", None) or {}
      self._offsets: dict[str, tuple[int, int]] = {}
      for name, h in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if h["dtype"] not in _ST_DTYPES:
          raise ValueError(f"leaf {name!r}: safetensors dtype {h['dtype']} is not supported; "
                           f"valid: {sorted(_ST_DTYPES)}")
        key = name.replace(sep, "/")
        self._add(key, name, tuple(h["shape"]), _np_dtype(_ST_DTYPES[h["dtype"]]))
        self._offsets[key] = (8 + n + h["data_offsets"][0], h["data_offsets"][1] -
                              h["data_offsets"][0])
    elif self.format == "npz":
      self._f = zipfile.ZipFile(self.path)
      for info in self._f.infolist():
        if not info.filename.endswith(".npy"):
          continue
        with self._f.open(info) as m:
          version = np.lib.format.read_magic(m)
          read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read_header(m)
        name = info.filename[:-4]
        self._add(name.replace(sep, "/"), name, tuple(shape), np.dtype(dtype))
    else:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      self._f = ocp.PyTreeCheckpointer()
      self.path = os.path.abspath(self.path)
      md = self._f.metadata(self.path).item_metadata.tree
      for k, m in flatten(md, "/").items():
        self._add(k, k, tuple(m.shape), np.dtype(m.dtype))

  def _add(self, key: str, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    self._specs[key] = (shape, dtype)
    self._names[key] = name

  def keys(self) -> list[str]:
    """Leaf paths in file order."""
    return list(self._specs)

  def spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of leaf ``key`` without reading it."""
    if key not in self._specs:
      raise ValueError(f"leaf {key!r} is not in {self.path!r}; it holds {self.keys()[:8]}...")
    return self._specs[key]

  def read(self, key: str) -> np.ndarray:
    """Reads leaf ``key`` (and only it); checks it for NaN/inf unless ``check=False`` (once per
    leaf and reader: the streaming merges read every leaf in each of their passes)."""
    self.spec(key)
    name = self._names[key]
    if self.format == "safetensors":
      shape, dtype = self._specs[key]
      start, nbytes = self._offsets[key]
      arr = np.empty(shape, dtype)
      self._f.seek(start)
      if self._f.readinto(arr.reshape(-1).view(np.uint8)) != nbytes:
        raise ValueError(f"leaf {key!r}: {self.path!r} is truncated")
    elif self.format == "npz":
      with self._f.open(name + ".npy") as m:
        arr = np.lib.format.read_array(m, allow_pickle=False)
    else:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      shape, dtype = self._specs[key]
      item = unflatten({key: np.zeros((), dtype)})
      args = unflatten({key: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)})
      out = self._f.restore(self.path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=True))
      arr = np.asarray(flatten(out)[key]).reshape(shape)
    if self.check and key not in self._checked:
      check_finite({key: arr}, f"checkpoint {self.path!r}")
      self._checked.add(key)
    return arr

  def close(self) -> None:
    """Releases the file handle."""
    self._f.close()


@contextlib.contextmanager
def open_leaves(path: str | os.PathLike, *, sep: str = "/",
                check: bool = True) -> Iterator[LeafReader]:
  """Context manager yielding a :class:`LeafReader` over ``path``."""
  r = LeafReader(path, sep=sep, check=check)
  try:
    yield r
  finally:
    r.close()


class LeafWriter:
  """Writes a safetensors or npz file one leaf at a time (never holding more than one leaf).

  ``specs`` maps every ``/``-joined key to ``(shape, dtype)`` up front (safetensors needs the
  header first); :meth:`write` takes the leaves in any order for npz, in ``specs`` order for
  safetensors. :meth:`close` checks that every leaf was written. Orbax output is not streamed:
  use :func:`save`.
  """

  def __init__(self, path: str | os.PathLike,
               specs: Mapping[str, tuple[Sequence[int], Any]], *,
               metadata: Mapping[str, str] | None = None):
    self.path = os.fspath(path)
    self.format = detect_format(self.path)
    if self.format == "orbax":
      raise ValueError(f"LeafWriter writes *.safetensors or *.npz, got directory {self.path!r}")
    self._specs = {k: (tuple(int(d) for d in s), np.dtype(dt)) for k, (s, dt) in specs.items()}
    if self.format == "npz":
      _check_npz_dtypes({k: dt for k, (_, dt) in self._specs.items()})
    self._pending = list(self._specs)
    if self.format == "safetensors":
      header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
      off = 0
      for k, (shape, dt) in self._specs.items():
        if dt.name not in _ST_CODES:
          raise ValueError(f"leaf {k!r}: dtype {dt} has no safetensors code; valid are "
                           f"{sorted(_ST_CODES)}")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[k] = {"dtype": _ST_CODES[dt.name], "shape": list(shape),
                     "data_offsets": [off, off + n]}
        off += n
      raw = json.dumps(header, separators=(",", ":")).encode()
      raw += b" " * (-len(raw) % 8)
      self._f = open(self.path, "wb")
      self._f.write(len(raw).to_bytes(8, "little") + raw)
    else:
      self._f = zipfile.ZipFile(self.path, "w", allowZip64=True)

  def write(self, key: str, value: Any) -> None:
    """Writes leaf ``key``; shape and dtype must equal its spec."""
    if key not in self._specs:
      raise ValueError(f"leaf {key!r} is not among the declared output leaves")
    if key not in self._pending:
      raise ValueError(f"leaf {key!r} was already written")
    arr = np.require(np.asarray(value), requirements="C")
    shape, dt = self._specs[key]
    if arr.shape != shape or arr.dtype != dt:
      raise ValueError(f"leaf {key!r}: declared shape {shape} dtype {dt}, got shape {arr.shape} "
                       f"dtype {arr.dtype}")
    if self.format == "safetensors":
      if key != self._pending[0]:
        raise ValueError(f"safetensors leaves must be written in declared order: expected "
                         f"{self._pending[0]!r}, got {key!r}")
      self._f.write(arr.reshape(-1).view(np.uint8).data)
    else:
      with self._f.open(key + ".npy", "w", force_zip64=True) as m:
        np.lib.format.write_array(m, arr, allow_pickle=False)
    self._pending.remove(key)

  def close(self) -> None:
    """Closes the file; raises ValueError if some declared leaf was never written."""
    self._f.close()
    if self._pending:
      raise ValueError(f"{len(self._pending)} declared leaves were not written, e.g. "
                       f"{self._pending[:5]}")

  def __enter__(self) -> "LeafWriter":
    return self

  def __exit__(self, *exc: Any) -> None:
    if exc[0] is None:
      self.close()
    else:
      self._f.close()


# ----------------------------------------------------------------------------- HF converters


@dataclasses.dataclass(frozen=True)
class Rule:
  """One line of a converter table.

  ``hf`` and ``target`` are templates whose ``{name}`` fields match digits (layer indices),
  e.g. ``hf="h.{i}.attn.c_proj.weight"``, ``target="blocks/{i}/attn/out/kernel"``. ``target``
  may be a tuple of templates when one HF tensor splits into several (fused qkv).

  ``transform``: ``"id"``; ``"T"`` (PyTorch ``Linear`` weight ``[out, in]`` -> Flax kernel
  ``[in, out]``); ``"conv"`` (PyTorch conv ``[out, in, kh, kw]`` -> Flax ``[kh, kw, in, out]``);
  ``"split"`` (split the last axis into ``len(target)`` equal parts; GPT-2 ``c_attn`` Conv1D is
  already ``[in, out]``). Every transform has an exact inverse, used by :func:`to_hf`.
  """
  hf: str
  target: str | tuple[str, ...]
  transform: str = "id"

  @property
  def targets(self) -> tuple[str, ...]:
    return (self.target,) if isinstance(self.target, str) else tuple(self.target)


def _template_regex(tmpl: str) -> re.Pattern[str]:
  parts = re.split(r"\{(\w+)\}", tmpl)
  rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
  return re.compile(rx)


def _forward(t: str, x: np.ndarray, n: int) -> list[np.ndarray]:
  if t == "id":
    return [x]
  if t == "T":
    return [np.ascontiguousarray(x.T)]
  if t == "conv":
    return [np.ascontiguousarray(x.transpose(2, 3, 1, 0))]
  if t == "split":
    if x.shape[-1] % n:
      raise ValueError(f"cannot split last axis of shape {x.shape} into {n} equal parts")
    return [np.ascontiguousarray(p) for p in np.split(x, n, axis=-1)]
  raise ValueError(f"unknown transform {t!r}; valid: 'id', 'T', 'conv', 'split'")


def _inverse(t: str, xs: list[np.ndarray]) -> np.ndarray:
  if t == "id":
    return xs[0]
  if t == "T":
    return np.ascontiguousarray(xs[0].T)
  if t == "conv":
    return np.ascontiguousarray(xs[0].transpose(3, 2, 0, 1))
  return np.concatenate(xs, axis=-1)


_V = "vision_model."
_L = _V + "encoder.layers.{i}."
CLIP_VISION_RULES: tuple[Rule, ...] = (
  Rule(_V + "embeddings.patch_embedding.weight", "embed/patch/kernel", "conv"),
  Rule(_V + "embeddings.class_embedding", "embed/cls"),
  Rule(_V + "embeddings.position_embedding.weight", "embed/pos/embedding"),
  Rule(_V + "pre_layrnorm.weight", "pre_norm/scale"),
  Rule(_V + "pre_layrnorm.bias", "pre_norm/bias"),
  *(Rule(_L + f"self_attn.{hf}_proj.weight", f"blocks/{{i}}/attn/{jx}/kernel", "T")
    for hf, jx in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out"))),
  *(Rule(_L + f"self_attn.{hf}_proj.bias", f"blocks/{{i}}/attn/{jx}/bias")
    for hf, jx in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out"))),
  *(Rule(_L + f"layer_norm{n}.{w}", f"blocks/{{i}}/norm{n}/{jw}")
    for n in (1, 2) for w, jw in (("weight", "scale"), ("bias", "bias"))),
  *(Rule(_L + f"mlp.{fc}.weight", f"blocks/{{i}}/mlp/{fc}/kernel", "T") for fc in ("fc1", "fc2")),
  *(Rule(_L + f"mlp.{fc}.bias", f"blocks/{{i}}/mlp/{fc}/bias") for fc in ("fc1", "fc2")),
  Rule(_V + "post_layernorm.weight", "post_norm/scale"),
  Rule(_V + "post_layernorm.bias", "post_norm/bias"),
  Rule("visual_projection.weight", "proj/kernel", "T"),
)
"""Hugging Face ``CLIPVisionModelWithProjection`` / ``CLIPModel`` vision tower -> jaxmtl ViT."""

GPT2_RULES: tuple[Rule, ...] = (
  Rule("wte.weight", "embed/embedding"),
  Rule("wpe.weight", "pos_embed/embedding"),
  Rule("h.{i}.attn.c_attn.weight", tuple(f"blocks/{{i}}/attn/{n}/kernel"
                                         for n in ("query", "key", "value")), "split"),
  Rule("h.{i}.attn.c_attn.bias", tuple(f"blocks/{{i}}/attn/{n}/bias"
                                       for n in ("query", "key", "value")), "split"),
  Rule("h.{i}.attn.c_proj.weight", "blocks/{i}/attn/out/kernel"),
  Rule("h.{i}.attn.c_proj.bias", "blocks/{i}/attn/out/bias"),
  *(Rule(f"h.{{i}}.ln_{n}.{w}", f"blocks/{{i}}/norm{n}/{jw}")
    for n in (1, 2) for w, jw in (("weight", "scale"), ("bias", "bias"))),
  Rule("h.{i}.mlp.c_fc.weight", "blocks/{i}/mlp/fc1/kernel"),
  Rule("h.{i}.mlp.c_fc.bias", "blocks/{i}/mlp/fc1/bias"),
  Rule("h.{i}.mlp.c_proj.weight", "blocks/{i}/mlp/fc2/kernel"),
  Rule("h.{i}.mlp.c_proj.bias", "blocks/{i}/mlp/fc2/bias"),
  Rule("ln_f.weight", "final_norm/scale"),
  Rule("ln_f.bias", "final_norm/bias"),
)
"""Hugging Face ``GPT2Model`` (Conv1D weights are already ``[in, out]``) -> jaxmtl decoder."""

DEFAULT_IGNORE = (r".*position_ids", r".*attn\.(masked_)?bias", r"lm_head\.weight",
                  r"text_model\..*", r"text_projection\..*", r"logit_scale")


def from_hf(flat_hf: Mapping[str, Any], rules: Sequence[Rule], *, prefixes: Sequence[str] = (
    "", "transformer.", "model."), ignore: Sequence[str] = DEFAULT_IGNORE,
            strict: bool = True) -> dict[str, Any]:
  """Hugging Face flat state dict (``.``-joined keys) -> jaxmtl nested dict.

  Keys are tried against each rule after stripping one of ``prefixes``. Keys matching an
  ``ignore`` regex (buffers, tied ``lm_head``, the CLIP text tower) are dropped; with
  ``strict`` any other unmatched key raises ValueError listing them. NaN/inf raise ValueError.
  """
  check_finite(flat_hf, "Hugging Face checkpoint")
  compiled = [(r, _template_regex(r.hf)) for r in rules]
  ign = [re.compile(p) for p in ignore]
  out: Flat = {}
  unmatched = []
  for key, value in flat_hf.items():
    hit = None
    for pre in sorted(prefixes, key=len, reverse=True):
      if not key.startswith(pre):
        continue
      for rule, rx in compiled:
        m = rx.fullmatch(key[len(pre):])
        if m:
          hit = (rule, m.groupdict())
          break
      if hit:
        break
    if hit is None:
      if not any(p.fullmatch(key) for p in ign):
        unmatched.append(key)
      continue
    rule, fields = hit
    parts = _forward(rule.transform, np.asarray(value), len(rule.targets))
    for tmpl, part in zip(rule.targets, parts):
      out[tmpl.format(**fields)] = part
  if strict and unmatched:
    raise ValueError(f"{len(unmatched)} checkpoint keys match no conversion rule nor ignore "
                     f"pattern, e.g. {unmatched[:8]}; extend the rule table or pass "
                     "strict=False")
  return unflatten(out, "/")


def to_hf(tree: Mapping[str, Any], rules: Sequence[Rule], *, prefix: str = "",
          strict: bool = True) -> Flat:
  """Inverse of :func:`from_hf`: jaxmtl nested dict -> HF flat dict (``prefix`` + HF key)."""
  flat = flatten(tree, "/")
  used: set[str] = set()
  out: Flat = {}
  for rule in rules:
    rx = _template_regex(rule.targets[0])
    for key in flat:
      m = rx.fullmatch(key)
      if not m:
        continue
      fields = m.groupdict()
      names = [t.format(**fields) for t in rule.targets]
      missing = [n for n in names if n not in flat]
      if missing:
        raise ValueError(f"cannot rebuild HF key {rule.hf.format(**fields)!r}: leaves {missing} "
                         "are missing")
      out[prefix + rule.hf.format(**fields)] = _inverse(
        rule.transform, [np.asarray(flat[n]) for n in names])
      used.update(names)
  rest = [k for k in flat if k not in used]
  if strict and rest:
    raise ValueError(f"leaves {rest[:8]} match no conversion rule; valid targets are the "
                     f"rule templates, e.g. {[r.targets[0] for r in rules[:4]]}")
  return out
