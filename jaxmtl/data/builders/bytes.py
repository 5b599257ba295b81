"""`jaxmtl_bytes`: byte-level language-modelling corpora that every Python install has.

Two corpora (builder config `corpus`), both read from the running CPython, so nothing is
downloaded and the licence is the PSF licence:

* `"pydoc"` (default, config names `seq{L}`): CPython's own reference text,
  `pydoc_data.topics.topics` (the language and library reference topics `help()` shows;
  ~466 KB of English prose and code examples on CPython 3.11.7), joined in sorted key order,
  UTF-8. The last 5% of the bytes (contiguous) form the test split.
* `"stdlib"` (config names `stdlib_seq{L}`): the standard library's `.py` sources
  (`sysconfig.get_paths()['stdlib']`; ~9.7 MB, 537 files on 3.11.7), files in sorted
  relative-path order, without `site-packages`/`dist-packages` (install-dependent), the test
  suites (`test`, `tests`, `idle_test`, `lib2to3`), the generated `encodings` charmap tables
  and `pydoc_data` (the other corpus). Train/test is split *by file*: a file is in the test
  split when sha256(relative path) mod 20 == 0 (30 files, ~5% of the bytes), so held-out
  text is never seen in training and the split does not move when other files change. It is
  20x larger than pydoc, enough for scaling-law token budgets without many epochs.

Each corpus's sha256 is stored in the dataset's metadata (`corpus_sha256`); another Python
patch version can change the text, and then `check_corpus` raises instead of mixing corpora.

Records: windows of `seq_len + 1` bytes (uint8 [seq_len + 1], key `tokens`), stride
`seq_len`, so consecutive windows share one byte and every byte is a target once; inputs are
`tokens[:-1]`, targets `tokens[1:]` (vocabulary: 256 byte values). Windows never cross the
train/test boundary; a trailing partial window is dropped. By name: `jaxmtl_bytes` (pydoc,
seq 128), `jaxmtl_bytes/seq64`, `jaxmtl_bytes/stdlib_seq128` (see `parse_config_name`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common

TEST_FRACTION = 0.05
DEFAULT_SEQ_LEN = 128
CORPORA = ("pydoc", "stdlib")
STDLIB_EXCLUDED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idle_test",
                        "__pycache__", "lib2to3", "encodings", "pydoc_data")
STDLIB_TEST_MODULUS = 20  # sha256(path) % 20 == 0 -> test split (about 5% of the files).
_CORPUS_SOURCE = {"pydoc": "pydoc_data.topics.topics", "stdlib": "stdlib .py sources"}


def _check_corpus_name(corpus: str) -> None:
  if corpus not in CORPORA:
    raise ValueError(f"invalid corpus {corpus!r}; valid choices: {', '.join(CORPORA)}")


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
  """Relative POSIX paths of the stdlib `.py` files of the `"stdlib"` corpus, sorted."""
  root = stdlib_root() if root is None else root
  out = []
  for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if x not in STDLIB_EXCLUDED_DIRS]
    out += [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
            for f in files if f.endswith(".py")]
  if not out:
    raise ValueError(f"no .py files under the standard library directory {root!r}; the "
                     "'stdlib' corpus needs a Python install with its sources")
  return sorted(out)


def stdlib_split_of(path: str) -> str:
  """'test' when sha256(relative path) % STDLIB_TEST_MODULUS == 0, else 'train'."""
  h = int(hashlib.sha256(path.encode("utf-8")).hexdigest()[:8], 16)
  return "test" if h % STDLIB_TEST_MODULUS == 0 else "train"


@functools.lru_cache(maxsize=4)
def corpus_splits(corpus: str = "pydoc") -> dict[str, bytes]:
  """{'train', 'test'} bytes of a corpus (cached: the stdlib corpus reads ~10 MB)."""
  _check_corpus_name(corpus)
  if corpus == "pydoc":
    data = corpus_bytes()
    boundary = int(len(data) * (1.0 - TEST_FRACTION))
    return {"train": data[:boundary], "test": data[boundary:]}
  root = stdlib_root()
  parts = {"train": [], "test": []}
  for path in stdlib_files(root):
    with open(os.path.join(root, path), "rb") as f:
      parts[stdlib_split_of(path)].append(f.read())
  return {k: b"".join(v) for k, v in parts.items()}


def corpus_bytes(corpus: str = "pydoc") -> bytes:
  """The whole corpus. pydoc: topics values in sorted key order, UTF-8; stdlib: train files
  then test files, each in sorted path order."""
  _check_corpus_name(corpus)
  if corpus == "pydoc":
    from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
    return "".join(topics[key] for key in sorted(topics)).encode("utf-8")
  s = corpus_splits(corpus)
  return s["train"] + s["test"]


@functools.lru_cache(maxsize=4)
def corpus_sha256(corpus: str = "pydoc") -> str:
  return hashlib.sha256(corpus_bytes(corpus)).hexdigest()


def windows(data: bytes, seq_len: int) -> np.ndarray:
  """uint8 [num_windows, seq_len + 1]: data[i*seq_len : i*seq_len + seq_len + 1]."""
  array = np.frombuffer(data, dtype=np.uint8)
  num = max((array.size - 1) // seq_len, 0)
  starts = np.arange(num, dtype=np.int64)[:, None] * seq_len
  return array[starts + np.arange(seq_len + 1, dtype=np.int64)[None, :]]


def load_bytes_split(seq_len: int, corpus: str = "pydoc") -> dict[str, np.ndarray]:
  """{'train'|'test': uint8 [n, seq_len + 1]} windows of each split of `corpus`."""
  return {k: windows(v, seq_len) for k, v in corpus_splits(corpus).items()}


@dataclasses.dataclass(eq=False)
class BytesConfig(tfds.core.BuilderConfig):
  """Window length and corpus; the config name is f'seq{L}' (pydoc) or f'{corpus}_seq{L}'."""
  seq_len: int = DEFAULT_SEQ_LEN
  corpus: str = "pydoc"


def bytes_config(seq_len: int, corpus: str = "pydoc") -> BytesConfig:
  if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
  _check_corpus_name(corpus)
  prefix = "" if corpus == "pydoc" else f"{corpus}_"
  return BytesConfig(name=f"{prefix}seq{seq_len}", seq_len=seq_len, corpus=corpus,
                     description=f"windows of {seq_len} + 1 bytes of the {corpus} corpus")


_CONFIG_NAME = re.compile(r"^(?:(?P<corpus>[a-z]+)_)?seq(?P<seq>[0-9]+)$")


def parse_config_name(name: str) -> BytesConfig:
  """'seq64' -> pydoc windows of 64; 'stdlib_seq128' -> stdlib windows of 128."""
  m = _CONFIG_NAME.match(name)
  if not m or int(m["seq"]) < 1 or (m["corpus"] or "pydoc") not in CORPORA:
    raise ValueError(f"invalid jaxmtl_bytes config {name!r}; expected 'seq<L>' (pydoc) or "
                     f"'<corpus>_seq<L>' with corpus in {', '.join(CORPORA)}, e.g. "
                     "'stdlib_seq128'")
  return bytes_config(int(m["seq"]), m["corpus"] or "pydoc")


class JaxmtlBytes(tfds.core.GeneratorBasedBuilder):
  """Byte-level LM windows over a Python-shipped corpus; `seq_len`/`corpus` kwargs pick the
  config."""

  VERSION = common.VERSION
  BUILDER_CONFIGS = [bytes_config(DEFAULT_SEQ_LEN), bytes_config(DEFAULT_SEQ_LEN, "stdlib")]

  def __init__(self, *, seq_len: int | None = None, corpus: str | None = None, **kwargs):
    if seq_len is not None or corpus is not None:
      if kwargs.get("config") is not None:
        raise ValueError(f"Pass seq_len={seq_len!r}/corpus={corpus!r} or "
                         f"config={kwargs['config']!r}, not both.")
      kwargs["config"] = bytes_config(DEFAULT_SEQ_LEN if seq_len is None else seq_len,
                                      corpus or "pydoc")
    elif isinstance(kwargs.get("config"), str):
      kwargs["config"] = parse_config_name(kwargs["config"])
    cfg = kwargs.get("config")
    if isinstance(cfg, BytesConfig) and cfg.name in {c.name for c in self.BUILDER_CONFIGS}:
      kwargs["config"] = cfg.name  # TFDS refuses a new object named like a listed config
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return common.dataset_info(
        self,
        description=__doc__,
        features={"tokens": tfds.features.Tensor(shape=(cfg.seq_len + 1,), dtype=np.uint8)},
        metadata={"corpus": _CORPUS_SOURCE[cfg.corpus],
                  "corpus_sha256": corpus_sha256(cfg.corpus), "seq_len": cfg.seq_len,
                  "test_fraction": TEST_FRACTION},
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = load_bytes_split(self.builder_config.seq_len, self.builder_config.corpus)
    return {name: self._generate_examples(tokens) for name, tokens in data.items()}

  def _generate_examples(self, tokens):
    for i, window in enumerate(tokens):
      yield i, {"tokens": window}


def check_corpus(builder: tfds.core.DatasetBuilder) -> None:
  """Raises ValueError when the prepared data came from a different corpus text."""
  corpus = getattr(builder.builder_config, "corpus", "pydoc")
  stored = builder.info.metadata.get("corpus_sha256") if builder.info.metadata else None
  current = corpus_sha256(corpus)
  if stored is not None and stored != current:
    raise ValueError(
        f"{builder.name} in {builder.data_dir} was built from a corpus with sha256 {stored}, "
        f"but this Python's {_CORPUS_SOURCE[corpus]} has sha256 {current} (another Python "
        "version?). Rebuild it into a different data_dir, or use the Python that built it.")
