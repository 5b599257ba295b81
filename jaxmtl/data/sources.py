"""Datasets by name -> grain random-access sources, via TFDS `array_record` files.

One entry point, `get_source(name, split, data_dir)`, for both the datasets jaxmtl builds
itself (`jaxmtl_digits`, `jaxmtl_multidigits`, `jaxmtl_mnist1d`, `jaxmtl_bytes`; prepared
offline on first use) and any TFDS dataset a user has already prepared. It never downloads:
an unprepared TFDS dataset fails at once with instructions (offline, `tfds.load` would hang for
minutes before failing). `dataset_info(name)` describes an embedded dataset's features and
which label belongs to which task.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any

import tensorflow_datasets as tfds

from jaxmtl.data.builders import EMBEDDED_BUILDERS
from jaxmtl.data.builders import bytes as bytes_lib
from jaxmtl.data.builders import suite as suite_lib

DATA_DIR_ENV = "JAXMTL_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/jaxmtl/tfds"


@dataclasses.dataclass(frozen=True)
class EmbeddedInfo:
  """What an embedded dataset holds: features {key: (shape, dtype)}, splits {name: size},
  tasks {task name: label key} (for `jaxmtl_bytes`, 'lm' is next-byte prediction on `tokens`)."""
  name: str
  features: dict[str, tuple[tuple[int, ...], str]]
  splits: dict[str, int]
  tasks: dict[str, str]
  description: str


_SEQ = bytes_lib.DEFAULT_SEQ_LEN
_INFOS = (
    EmbeddedInfo("jaxmtl_digits", {"image": ((8, 8, 1), "uint8"), "label": ((), "int64")},
                 {"train": 1437, "test": 360}, {"digit": "label"},
                 "scikit-learn 8x8 digits, pixels 0..16 scaled to uint8 0..255"),
    EmbeddedInfo("jaxmtl_multidigits",
                 {"image": ((16, 16, 1), "uint8"), "label_left": ((), "int64"),
                  "label_right": ((), "int64")},
                 {"train": 8000, "test": 2000}, {"left": "label_left", "right": "label_right"},
                 "two sklearn digits overlaid on a 16x16 canvas (MultiMNIST-style)"),
    EmbeddedInfo("jaxmtl_mnist1d", {"x": ((40, 1), "float32"), "label": ((), "int64")},
                 {"train": 4000, "test": 1000}, {"digit": "label"},
                 "MNIST-1D from the mnist1d generator (default args, seed 42)"),
    EmbeddedInfo("jaxmtl_bytes", {"tokens": ((_SEQ + 1,), "uint8")},
                 {"train": 3459, "test": 182}, {"lm": "tokens"},
                 "byte windows of CPython's pydoc topics (seq_len=128 shown; sizes vary with "
                 "seq_len and the Python version); inputs tokens[:-1], targets tokens[1:]"),
)
# The merging task suite (builders/suite.py, docs/merging.md): one dataset per task, whose task
# is named like its data.mixture head ("suite_<task>").
_INFOS += tuple(
    EmbeddedInfo(suite_lib.dataset_name(t.name),
                 {"image": (suite_lib.SHAPE, "uint8"), "label": ((), "int64")},
                 dict(zip(("train", "test"), t.sizes)), {f"suite_{t.name}": "label"},
                 t.description)
    for t in suite_lib.TASKS)
_INFO_BY_NAME = {info.name: info for info in _INFOS}


def default_data_dir() -> str:
  """$JAXMTL_DATA_DIR if set, else ~/.cache/jaxmtl/tfds (expanded)."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def embedded_names() -> tuple[str, ...]:
  return tuple(EMBEDDED_BUILDERS)


def _unknown_embedded(name: str) -> ValueError:
  close = difflib.get_close_matches(name, EMBEDDED_BUILDERS, n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return ValueError(f"Unknown embedded dataset {name!r}; valid names: "
                    f"{', '.join(EMBEDDED_BUILDERS)}.{hint}")


def split_config(name: str) -> tuple[str, str | None]:
  """'jaxmtl_bytes/stdlib_seq128' -> ('jaxmtl_bytes', 'stdlib_seq128'); 'x' -> ('x', None)."""
  base, sep, config = name.partition("/")
  return base, (config if sep else None)


def is_embedded(name: str) -> bool:
  """An embedded dataset's name, with or without a '/config' suffix (TFDS's syntax)."""
  return split_config(name)[0] in EMBEDDED_BUILDERS


def _bytes_info(config: str) -> EmbeddedInfo:
  cfg = bytes_lib.parse_config_name(config)
  sizes = {k: max((len(v) - 1) // cfg.seq_len, 0)  # = len(bytes_lib.windows(v, seq_len))
           for k, v in bytes_lib.corpus_splits(cfg.corpus).items()}
  return EmbeddedInfo(f"jaxmtl_bytes/{config}", {"tokens": ((cfg.seq_len + 1,), "uint8")},
                      sizes, {"lm": "tokens"},
                      f"byte windows ({cfg.seq_len} + 1) of the {cfg.corpus} corpus")


def dataset_info(name: str) -> EmbeddedInfo:
  """Features, split sizes and tasks of an embedded dataset; ValueError lists valid names.

  `jaxmtl_bytes/<config>` (e.g. `stdlib_seq128`, `seq64`) describes that builder config."""
  base, config = split_config(name)
  if base == "jaxmtl_bytes" and config is not None:
    return _bytes_info(config)
  if name not in _INFO_BY_NAME:
    raise _unknown_embedded(name)
  return _INFO_BY_NAME[name]


def _is_embedded_typo(name: str) -> bool:
  return name.startswith("jaxmtl") or bool(
      difflib.get_close_matches(name, EMBEDDED_BUILDERS, n=1, cutoff=0.85))


def get_builder(name: str, data_dir: str | None = None, **builder_kwargs: Any):
  """A prepared `tfds.core.DatasetBuilder` for `name` in `data_dir` (never downloads).

  Embedded datasets are built on first use (idempotent: skipped when already prepared).
  Other names must be TFDS datasets already prepared in `data_dir`; otherwise this raises
  FileNotFoundError at once, saying how to prepare them on a machine with network access.
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  base, config = split_config(name)
  if base in EMBEDDED_BUILDERS:
    if config is not None:  # 'jaxmtl_bytes/stdlib_seq128': a builder config by name
      builder_kwargs = {**builder_kwargs, "config": config}
    builder = EMBEDDED_BUILDERS[base](data_dir=data_dir, file_format="array_record",
                                      **builder_kwargs)
    if not builder.is_prepared():
      builder.download_and_prepare()
    if base == "jaxmtl_bytes":
      bytes_lib.check_corpus(builder)
    return builder
  if _is_embedded_typo(name):
    raise _unknown_embedded(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split(":")[0], known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown dataset {name!r}: neither an embedded jaxmtl dataset "
                     f"({', '.join(EMBEDDED_BUILDERS)}) nor a TFDS dataset.{hint}") from e
  if not builder.is_prepared():
    base = name.split(":")[0].split("/")[0]
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} (looked for "
        f"{builder.data_dir}), and jaxmtl never downloads. On a machine with network access "
        f"run `tfds build {base} --data_dir=DIR --file_format=array_record` (or "
        f"`tfds.builder({name!r}, data_dir=DIR, file_format='array_record')"
        f".download_and_prepare()`), then copy DIR/{base} into {data_dir!r} (or pass "
        f"data_dir / set ${DATA_DIR_ENV}).")
  return builder


def get_source(name: str, split: str, data_dir: str | None = None, **builder_kwargs: Any):
  """A grain-compatible random-access source (`len`, `[i]` -> dict of numpy) for a split.

  `split` may use TFDS slicing (e.g. 'train[:90%]'); its base name must be one of the
  dataset's splits. `builder_kwargs` go to the builder (e.g. `seq_len=256` for jaxmtl_bytes,
  `config=` for a TFDS dataset).
  """
  builder = get_builder(name, data_dir, **builder_kwargs)
  base_split = re.split(r"[\[+]", split, maxsplit=1)[0]
  if base_split not in builder.info.splits:
    raise ValueError(f"Unknown split {split!r} for {name!r}; valid splits: "
                     f"{', '.join(builder.info.splits)}.")
  return builder.as_data_source(split=split)
