"""Device mesh, logical-axis rules and sharding helpers.

The mesh always has the three axes `data`, `fsdp`, `tensor` (AxisType.Auto).
Every parameter carries logical axis names (`embed`, `mlp`, `heads`, ...);
one rules table maps logical names to mesh axes, as in maxtext / t5x:

  strategy "dp"      : parameters replicated, batch over (data, fsdp)
  strategy "fsdp"    : parameters sharded over `fsdp` along `embed`/`vocab`
  strategy "tp"      : Megatron-style tensor parallel (`mlp`, `heads`, `vocab`
                       over `tensor`), batch over (data, fsdp)
  strategy "fsdp_tp" : both

A dimension that is not divisible by its mesh axes is left unsharded (the
rules are preferences; a 10-class head on a 4-way axis stays replicated).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]

# Logical axis name -> mesh axis (or tuple of mesh axes, or None), per strategy.
_BASE = (("batch", BATCH_AXES), ("task", None), ("classes", None), ("input", None),
         ("kv", None), ("seq", None), ("patch", None))
RULES: dict[str, Rules] = {
    "dp": _BASE + (("embed", None), ("mlp", None), ("heads", None), ("vocab", None)),
    "fsdp": _BASE + (("embed", "fsdp"), ("mlp", None), ("heads", None), ("vocab", "fsdp")),
    "tp": _BASE + (("embed", None), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor")),
    "fsdp_tp": _BASE + (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                        ("vocab", "tensor")),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over (data, fsdp, tensor); one entry may be -1 (= the rest).

  `rules` overrides the strategy's table: a tuple of (logical, mesh axis) pairs.
  `min_shard_fraction`: for strategies that shard parameters, the check
  `check_sufficiently_sharded` fails when a device holds more than
  `(1 + min_shard_fraction)` times its ideal share of parameter bytes, counted
  over the leaves with at least `check_min_size` elements (small vectors and
  heads are meant to be replicated).
  """
  shape: tuple[int, int, int] = (-1, 1, 1)
  strategy: Literal["dp", "fsdp", "tp", "fsdp_tp"] = "dp"
  rules: tuple[tuple[str, Any], ...] | None = None
  min_shard_fraction: float = 0.5
  check_min_size: int = 65536


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 in `shape` so the product is `num_devices`."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if any(s == 0 or s < -1 for s in shape) or num_devices % known:
    raise ValueError(f"mesh shape {shape} does not divide the {num_devices} devices")
  shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {shape} uses {math.prod(shape)} devices, but "
                     f"{num_devices} are available; use -1 for one axis")
  return shape


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh with Auto axis types."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_shape(cfg.shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_for(cfg: MeshConfig) -> Rules:
  return tuple(tuple(r) for r in cfg.rules) if cfg.rules is not None else RULES[cfg.strategy]


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], rules: Rules,
                    mesh: Mesh) -> P:
  """Maps logical axis names of an array of `shape` to a PartitionSpec.

  A mesh axis is used at most once per array, and only where it divides the
  dimension; otherwise that dimension is replicated.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical, shape):
    axes = table.get(name) if name is not None else None
    if axes is not None:
      tup = (axes,) if isinstance(axes, str) else tuple(axes)
      tup = tuple(a for a in tup if a not in used and mesh.shape[a] > 1)
      if tup and dim % _axis_size(mesh, tup) == 0:
        used.update(tup)
        spec.append(tup[0] if len(tup) == 1 else tup)
        continue
    spec.append(None)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def tree_shardings(axes_tree: Any, shapes_tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """NamedShardings for a pytree, from a tree of logical-axes tuples and shapes."""
  return jax.tree.map(
      lambda ax, s: NamedSharding(mesh, logical_to_spec(ax, s.shape, rules, mesh)),
      axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Sharding of a batch array: leading axis over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def bytes_per_device(shapes_tree: Any, shardings_tree: Any) -> dict[Any, int]:
  """Bytes of the pytree held by each device under the given shardings."""
  per_device: dict[Any, int] = {}
  for s, sh in zip(jax.tree.leaves(shapes_tree), jax.tree.leaves(shardings_tree)):
    shard_shape = sh.shard_shape(s.shape)
    nbytes = int(np.prod(shard_shape)) * np.dtype(s.dtype).itemsize
    for d in sh.device_set:
      per_device[d] = per_device.get(d, 0) + nbytes
  return per_device


def check_sufficiently_sharded(shapes_tree: Any, shardings_tree: Any, mesh: Mesh,
                               cfg: MeshConfig) -> dict[str, float]:
  """Checks parameters are spread over the parameter-sharding axes (maxtext-style).

  The ideal per-device share is total / (fsdp * tensor) for strategies that
  shard parameters over those axes. Raises ValueError when the largest device
  holds more than `(1 + cfg.min_shard_fraction)` times the ideal share.

  Returns:
    {"total_bytes", "max_device_bytes", "ideal_bytes", "ratio"}.
  """
  pairs = [(s, sh) for s, sh in zip(jax.tree.leaves(shapes_tree), jax.tree.leaves(shardings_tree))
           if int(np.prod(s.shape)) >= cfg.check_min_size]
  total = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s, _ in pairs)
  per_device = bytes_per_device([s for s, _ in pairs], [sh for _, sh in pairs])
  max_bytes = max(per_device.values()) if per_device else 0
  table = dict(rules_for(cfg))
  param_axes = {a for k in ("embed", "mlp", "heads", "vocab")
                for a in ((table.get(k),) if isinstance(table.get(k), str) else (table.get(k) or ()))}
  ways = math.prod(mesh.shape[a] for a in param_axes) if param_axes else 1
  ideal = total / ways
  ratio = max_bytes / ideal if ideal else 1.0
  if ways > 1 and ratio > 1 + cfg.min_shard_fraction:
    raise ValueError(
        f"parameters are not sufficiently sharded: the fullest device holds "
        f"{max_bytes / 2**20:.1f} MiB, {ratio:.2f}x the ideal {ideal / 2**20:.1f} MiB "
        f"over {sorted(param_axes)}; check the rules table or model dimensions "
        f"(mesh {dict(mesh.shape)})")
  return {"total_bytes": float(total), "max_device_bytes": float(max_bytes),
          "ideal_bytes": float(ideal), "ratio": float(ratio)}


def describe_shardings(shardings_tree: Any) -> dict[str, str]:
  """{'path': 'PartitionSpec(...)'} for logs and benchmarks."""
  out = {}
  for path, sh in jax.tree_util.tree_flatten_with_path(shardings_tree)[0]:
    out[jax.tree_util.keystr(path, simple=True, separator="/")] = str(sh.spec)
  return out


def mesh_summary(mesh: Mesh) -> Mapping[str, int]:
  return dict(mesh.shape)
