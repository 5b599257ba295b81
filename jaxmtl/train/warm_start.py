"""Warm start (`train.init_from`): take parameters from another run or a params file.

Fine-tuning starts from a pretrained backbone: every parameter of the new model whose path
(``"layers/0/kernel"``) and shape match one in the source is taken from it, already on the
new model's sharding; the others (a new task's head, leaves matched by `train.init_exclude`)
keep their fresh initialisation. Optimizer and MTL state always start fresh.

Sources, tried in this order:
  * a run's workdir (has ``checkpoints/``) or a checkpoints directory: its latest step;
  * one step of a checkpoints directory (``.../checkpoints/<step>``) or its ``state`` item;
  * a params file: ``*.npz``, ``*.safetensors`` (e.g. written by ``jaxmtl-merge``) or an orbax
    PyTree directory (`jaxmtl.merging.io`).
Orbax sources are restored partially (only the matched leaves are read) onto the target
shardings, so no process ever holds the full source state.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

import jax
import numpy as np

from jaxmtl.merging import io as ckpt_io
from jaxmtl.merging.task_vectors import path_str


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """What `load_matching` took: source path (and step), loaded / fresh / unused leaf paths."""
  source: str
  step: int | None
  loaded: tuple[str, ...]
  fresh: tuple[str, ...]
  unused: tuple[str, ...]

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)


def resolve(path: str | pathlib.Path) -> tuple[pathlib.Path, int | None, str]:
  """(path to read, step or None, kind): kind is "state" (a TrainState item, read its
  ``params``) or "params" (a params file or PyTree directory)."""
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise ValueError(f"train.init_from: {str(p)!r} does not exist")
  if p.is_dir():
    ckpts = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    steps = sorted(int(c.name) for c in ckpts.iterdir() if c.name.isdigit()
                   and (c / "state").is_dir())
    if steps:
      return ckpts / str(steps[-1]) / "state", steps[-1], "state"
    if (p / "state").is_dir():
      return p / "state", int(p.name) if p.name.isdigit() else None, "state"
    if p.name == "state" and p.parent.name.isdigit():
      return p, int(p.parent.name), "state"
  return p, None, "params"


def load_matching(path: str | pathlib.Path, target: Any, exclude: str = ""
                  ) -> tuple[dict[str, Any], WarmStart]:
  """Reads the leaves of `target` (abstract params with shardings) found in `path`.

  Returns:
    ({"a/b/c": jax.Array on the target sharding}, WarmStart report).
  Raises:
    ValueError: the path does not exist, nothing matches, or a leaf exists in both with
      different shapes (naming the path and both shapes; exclude it with `init_exclude`).
  """
  src, step, kind = resolve(path)
  want = _by_path(target)
  skip = re.compile(exclude) if exclude else None
  if kind == "state" or ckpt_io.detect_format(src) == "orbax":
    have = _orbax_shapes(src, kind)
  else:
    flat = ckpt_io.load(src, nested=False)
    have = {k: np.shape(v) for k, v in flat.items()}
  mismatched = [f"{k}: source {have[k]} vs model {tuple(want[k].shape)}" for k in want
                if k in have and tuple(have[k]) != tuple(want[k].shape)
                and not (skip and skip.fullmatch(k))]
  if mismatched:
    raise ValueError("train.init_from: shapes differ for " + "; ".join(mismatched)
                     + ". Set train.init_exclude to a regex of these paths to keep them fresh.")
  take = [k for k in want if k in have and not (skip and skip.fullmatch(k))]
  if not take:
    raise ValueError(f"train.init_from: no parameter of the model is in {str(src)!r}; model "
                     f"paths start {sorted(want)[:4]}, source paths {sorted(have)[:4]}")
  if kind == "state" or ckpt_io.detect_format(src) == "orbax":
    values = _orbax_read(src, kind, {k: want[k] for k in take})
  else:
    values = {k: jax.device_put(np.asarray(flat[k], want[k].dtype), want[k].sharding)
              for k in take}
  report = WarmStart(str(src), step, tuple(take), tuple(k for k in want if k not in take),
                     tuple(k for k in have if k not in want))
  return values, report


def apply(params: Any, values: dict[str, Any]) -> Any:
  """`params` with the leaves at the paths of `values` ("a/b/c") replaced."""
  return jax.tree_util.tree_map_with_path(lambda p, x: values.get(path_str(p), x), params)


def _by_path(tree: Any) -> dict[str, Any]:
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _orbax_shapes(src: pathlib.Path, kind: str) -> dict[str, tuple[int, ...]]:
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(src)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if kind == "state":
    tree = tree["params"]
  return {k: tuple(m.shape) for k, m in _flatten_meta(tree).items()}


def _flatten_meta(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    out.update(_flatten_meta(v, key) if isinstance(v, dict) else {key: v})
  return out


def _orbax_read(src: pathlib.Path, kind: str, want: dict[str, Any]) -> dict[str, Any]:
  """Partial orbax restore of the leaves `want` ({path: ShapeDtypeStruct with sharding})."""
  import orbax.checkpoint as ocp
  item = ckpt_io.unflatten(dict(want))
  if kind == "state":
    item = {"params": item}
  args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                                     dtype=s.dtype), item)
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(src, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                         partial_restore=True))
  return ckpt_io.flatten(out["params"] if kind == "state" else out)
