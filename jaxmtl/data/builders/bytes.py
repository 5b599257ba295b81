"""`jaxmtl_bytes`: a byte-level English corpus for language modelling, present on every Python.

Corpus: CPython's own reference text, `pydoc_data.topics.topics` (the Python language and
library reference topics `help()` shows; ~466 KB of English prose and code examples on
CPython 3.11.7), joined in sorted key order and UTF-8 encoded. Why: it ships with every
CPython (no download, no licence question beyond the PSF licence), and it is real text. Its
sha256 is stored in the dataset's metadata (`corpus_sha256`); a different Python patch
version can change the text, and then `check_corpus` raises.

Records: windows of `seq_len + 1` bytes (uint8 [seq_len + 1], key `tokens`), stride
`seq_len`, so consecutive windows share one byte and every byte is a target once; inputs are
`tokens[:-1]`, targets `tokens[1:]` (vocabulary: 256 byte values). The last 5% of the bytes
(contiguous) form the test split; windows never cross the train/test boundary; a trailing
partial window is dropped.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common

TEST_FRACTION = 0.05
DEFAULT_SEQ_LEN = 128


def corpus_bytes() -> bytes:
  """The corpus: pydoc_data.topics.topics values in sorted key order, UTF-8."""
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  return "".join(topics[key] for key in sorted(topics)).encode("utf-8")


def corpus_sha256() -> str:
  return hashlib.sha256(corpus_bytes()).hexdigest()


def windows(data: bytes, seq_len: int) -> np.ndarray:
  """uint8 [num_windows, seq_len + 1]: data[i*seq_len : i*seq_len + seq_len + 1]."""
  array = np.frombuffer(data, dtype=np.uint8)
  num = (array.size - 1) // seq_len
  starts = np.arange(num, dtype=np.int64)[:, None] * seq_len
  return array[starts + np.arange(seq_len + 1, dtype=np.int64)[None, :]]


def load_bytes_split(seq_len: int) -> dict[str, np.ndarray]:
  """{'train'|'test': uint8 [n, seq_len + 1]}: last 5% of the bytes is the test split."""
  data = corpus_bytes()
  boundary = int(len(data) * (1.0 - TEST_FRACTION))
  return {"train": windows(data[:boundary], seq_len), "test": windows(data[boundary:], seq_len)}


@dataclasses.dataclass(eq=False)
class BytesConfig(tfds.core.BuilderConfig):
  """Window length; the config name is f'seq{seq_len}'."""
  seq_len: int = DEFAULT_SEQ_LEN


def bytes_config(seq_len: int) -> BytesConfig:
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
  return BytesConfig(name=f"seq{seq_len}", seq_len=seq_len,
                     description=f"windows of {seq_len} + 1 bytes")


class JaxmtlBytes(tfds.core.GeneratorBasedBuilder):
  """Byte-level LM windows over CPython's pydoc topics; `seq_len` kwarg picks the config."""

  VERSION = common.VERSION
  BUILDER_CONFIGS = [bytes_config(DEFAULT_SEQ_LEN)]

  def __init__(self, *, seq_len: int | None = None, **kwargs):
    if seq_len is not None:
      if kwargs.get("config") is not None:
        raise ValueError(f"Pass seq_len={seq_len!r} or config={kwargs['config']!r}, not both.")
      kwargs["config"] = bytes_config(seq_len)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    seq_len = self.builder_config.seq_len
    return common.dataset_info(
        self,
        description=__doc__,
        features={"tokens": tfds.features.Tensor(shape=(seq_len + 1,), dtype=np.uint8)},
        metadata={"corpus": "pydoc_data.topics.topics", "corpus_sha256": corpus_sha256(),
                  "seq_len": seq_len, "test_fraction": TEST_FRACTION},
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = load_bytes_split(self.builder_config.seq_len)
    return {name: self._generate_examples(tokens) for name, tokens in data.items()}

  def _generate_examples(self, tokens):
    for i, window in enumerate(tokens):
      yield i, {"tokens": window}


def check_corpus(builder: tfds.core.DatasetBuilder) -> None:
  """Raises ValueError when the prepared data came from a different corpus text."""
  stored = builder.info.metadata.get("corpus_sha256") if builder.info.metadata else None
  current = corpus_sha256()
  if stored is not None and stored != current:
    raise ValueError(
        f"{builder.name} in {builder.data_dir} was built from a corpus with sha256 {stored}, "
        f"but this Python's pydoc_data.topics has sha256 {current} (another Python version?). "
        "Rebuild it into a different data_dir, or use the Python that built it.")
