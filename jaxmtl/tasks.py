"""Tasks: which label each head predicts, its loss and its metrics.

A `Task` is static data (name, label key, number of outputs, kind). A
`DataSpec` says how to turn a raw batch of a dataset into model inputs and
per-task labels. Both are derived from the dataset's description
(`jaxmtl.data.sources.dataset_info` for embedded data, TFDS features for others).

Losses follow the usual conventions: softmax cross-entropy averaged over the
(unmasked) examples; for language modelling, averaged over tokens, and
reported also in bits per byte (loss / ln 2).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

Kind = Literal["classification", "lm"]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  label_key: str
  num_outputs: int
  kind: Kind = "classification"


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """How to read one dataset: input key, input shape, scaling, and its tasks."""
  name: str
  input_key: str
  input_shape: tuple[int, ...]
  input_scale: float | None          # multiply inputs by this (uint8 images: 1/255)
  tasks: tuple[Task, ...]


def data_spec(dataset: str, data_dir: str | None = None,
              select: Sequence[str] | None = None) -> DataSpec:
  """The DataSpec of an embedded dataset, or of a TFDS dataset by name.

  Args:
    dataset: e.g. "jaxmtl_multidigits" or any prepared TFDS dataset name.
    select: task names to keep (None: all). Unknown names raise ValueError.
  """
  from jaxmtl.data import sources  # Local import: data pulls in TFDS.
  if sources.is_embedded(dataset):  # also 'jaxmtl_bytes/stdlib_seq128'
    info = sources.dataset_info(dataset)
    if "tokens" in info.features:
      (seq_plus_one,), _ = info.features["tokens"]
      spec = DataSpec(dataset, "tokens", (seq_plus_one - 1,), None,
                      (Task("lm", "tokens", 256, "lm"),))
    else:
      input_key = "image" if "image" in info.features else "x"
      shape, dtype = info.features[input_key]
      scale = 1.0 / 255.0 if dtype == "uint8" else None
      spec = DataSpec(dataset, input_key, tuple(shape), scale,
                      tuple(Task(t, key, 10) for t, key in info.tasks.items()))
  else:
    spec = _tfds_spec(dataset, data_dir)
  return _select(spec, select)


MIXTURE_INPUT_KEY = "inputs"


def short_name(dataset: str) -> str:
  """"jaxmtl_digits" -> "digits": the prefix of a dataset's task names in a mixture."""
  return dataset.removeprefix("jaxmtl_")


def mixture_spec(datasets: Sequence[str], data_dir: str | None = None,
                 select: Sequence[str] | None = None) -> tuple[DataSpec, tuple[DataSpec, ...]]:
  """The DataSpec of several datasets trained jointly, and each member's own DataSpec.

  Tasks are named after their dataset: a single-task dataset's task is the dataset's short
  name ("digits"), a multi-task dataset's are "<short>_<task>" ("multidigits_left"). Every
  example carries every task's label under `label_<task>`, -1 where its dataset has no such
  task (`task_losses` ignores labels < 0). Inputs arrive as float32 already scaled, under
  "inputs". All members must be classification datasets with one input shape.

  Raises:
    ValueError: fewer than two datasets, duplicates, an LM dataset, or different input shapes
      (naming each dataset's shape).
  """
  datasets = tuple(datasets)
  if len(datasets) < 2 or len(set(datasets)) != len(datasets):
    raise ValueError(f"data.mixture needs at least two distinct datasets, got {list(datasets)}")
  members = tuple(data_spec(d, data_dir) for d in datasets)
  lm = [m.name for m in members if any(t.kind == "lm" for t in m.tasks)]
  if lm:
    raise ValueError(f"data.mixture supports classification datasets only; {lm} are language "
                     "modelling datasets")
  shapes = {m.name: m.input_shape for m in members}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"datasets in data.mixture must share one input shape, got {shapes}")
  tasks = []
  for m in members:
    for t in m.tasks:
      name = short_name(m.name) if len(m.tasks) == 1 else f"{short_name(m.name)}_{t.name}"
      tasks.append(Task(name, f"label_{name}", t.num_outputs, t.kind))
  spec = DataSpec("+".join(datasets), MIXTURE_INPUT_KEY, members[0].input_shape, None,
                  tuple(tasks))
  return _select(spec, select), members


def _tfds_spec(dataset: str, data_dir: str | None) -> DataSpec:
  import tensorflow_datasets as tfds
  from jaxmtl.data import sources
  builder = sources.get_builder(dataset, data_dir)
  feats = builder.info.features
  input_key = next((k for k in ("image", "x", "features") if k in feats), None)
  if input_key is None:
    raise ValueError(f"dataset {dataset!r}: no input feature among image/x/features; "
                     f"its features are {list(feats)}")
  tasks = tuple(Task(k, k, f.num_classes) for k, f in feats.items()
                if isinstance(f, tfds.features.ClassLabel))
  shape = tuple(feats[input_key].shape)
  scale = 1.0 / 255.0 if str(feats[input_key].dtype) in ("uint8", "<dtype: 'uint8'>") else None
  return DataSpec(dataset, input_key, shape, scale, tasks)


def _select(spec: DataSpec, select: Sequence[str] | None) -> DataSpec:
  if not select:
    return spec
  names = [t.name for t in spec.tasks]
  unknown = [s for s in select if s not in names]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown} for dataset {spec.name!r}; valid: {names}")
  return dataclasses.replace(spec, tasks=tuple(t for t in spec.tasks if t.name in select))


def prepare_batch(spec: DataSpec, batch: Mapping[str, jax.Array]
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Raw batch -> (inputs, {task: labels}). LM: inputs tokens[:, :-1], labels tokens[:, 1:]."""
  x = batch[spec.input_key]
  if spec.tasks and spec.tasks[0].kind == "lm":
    tokens = x.astype(jnp.int32)
    return tokens[:, :-1], {t.name: tokens[:, 1:] for t in spec.tasks}
  x = x.astype(jnp.float32)
  if spec.input_scale is not None:
    x = x * spec.input_scale
  return x, {t.name: batch[t.label_key].astype(jnp.int32) for t in spec.tasks}


def task_losses(tasks: Sequence[Task], logits: Mapping[str, jax.Array],
                labels: Mapping[str, jax.Array], mask_B: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-task mean losses f32[T] and per-task metric sums.

  Examples whose label is negative (no label for that task) and masked examples are left
  out; a task with no labelled example in the batch has loss 0 and count 0.

  Returns:
    losses_T: mean loss of each task over unmasked examples (tokens for LM).
    stats: {"<task>/loss_sum", "<task>/correct", "<task>/count"} sums, so that
      evaluation can aggregate exactly over batches.
  """
  losses, stats = [], {}
  for t in tasks:
    lg = logits[t.name].astype(jnp.float32)
    y = labels[t.name]
    # Labels < 0 mean "no label for this task" (mixtures of datasets): weight 0.
    w = (y >= 0).astype(jnp.float32)
    y = jnp.maximum(y, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(lg, y)
    correct = (jnp.argmax(lg, -1) == y).astype(jnp.float32)
    if mask_B is not None:
      w = w * mask_B.reshape(mask_B.shape + (1,) * (ce.ndim - 1)).astype(jnp.float32)
    count = w.sum()
    loss_sum = (ce * w).sum()
    losses.append(loss_sum / jnp.maximum(count, 1.0))
    stats[f"{t.name}/loss_sum"] = loss_sum
    stats[f"{t.name}/correct"] = (correct * w).sum()
    stats[f"{t.name}/count"] = count
  return jnp.stack(losses), stats


def summarize(tasks: Sequence[Task], stats: Mapping[str, Any]) -> dict[str, float]:
  """Sums from `task_losses` -> {"<task>/loss", "<task>/accuracy" (, "<task>/bpb")}."""
  out = {}
  for t in tasks:
    n = max(float(stats[f"{t.name}/count"]), 1.0)
    out[f"{t.name}/loss"] = float(stats[f"{t.name}/loss_sum"]) / n
    out[f"{t.name}/accuracy"] = float(stats[f"{t.name}/correct"]) / n
    if t.kind == "lm":
      out[f"{t.name}/bpb"] = out[f"{t.name}/loss"] / math.log(2)
  return out
