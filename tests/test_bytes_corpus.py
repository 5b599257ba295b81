"""jaxmtl_bytes corpora: the stdlib corpus (split by file) and builder configs by name."""
import hashlib
import os
import sysconfig

import numpy as np
import pytest

from jaxmtl import tasks
from jaxmtl.data import sources
from jaxmtl.data.builders import bytes as bytes_lib


def test_stdlib_corpus_split_by_file():
  files = bytes_lib.stdlib_files()
  assert files == sorted(files) and len(files) > 100
  excluded = set(bytes_lib.STDLIB_EXCLUDED_DIRS)
  assert not any(excluded & set(f.split("/")[:-1]) for f in files)
  assert all(f.endswith(".py") for f in files)
  test = [f for f in files if bytes_lib.stdlib_split_of(f) == "test"]
  assert test == [f for f in files
                  if int(hashlib.sha256(f.encode()).hexdigest()[:8], 16) % 20 == 0]
  root = sysconfig.get_paths()["stdlib"]
  read = lambda fs: b"".join(open(os.path.join(root, f), "rb").read() for f in fs)  # noqa: E731
  splits = bytes_lib.corpus_splits("stdlib")
  assert splits["test"] == read(test)
  assert splits["train"] == read([f for f in files if f not in set(test)])
  assert 0.02 < len(splits["test"]) / (len(splits["train"]) + len(splits["test"])) < 0.1
  windows = bytes_lib.load_bytes_split(128, "stdlib")
  np.testing.assert_array_equal(windows["train"][1:, 0], windows["train"][:-1, -1])
  assert bytes(windows["test"][0]) == splits["test"][:129]
  info = sources.dataset_info("jaxmtl_bytes/stdlib_seq128")
  assert info.splits == {k: len(v) for k, v in windows.items()}
  assert info.features == {"tokens": ((129,), "uint8")}
  spec = tasks.data_spec("jaxmtl_bytes/stdlib_seq128")
  assert spec.input_shape == (128,) and spec.tasks[0].kind == "lm"


def test_config_names():
  assert bytes_lib.parse_config_name("seq64").corpus == "pydoc"
  cfg = bytes_lib.parse_config_name("stdlib_seq256")
  assert (cfg.corpus, cfg.seq_len, cfg.name) == ("stdlib", 256, "stdlib_seq256")
  for bad in ("seq0", "wiki_seq128", "stdlib128", ""):
    with pytest.raises(ValueError, match="stdlib_seq128"):
      bytes_lib.parse_config_name(bad)
  with pytest.raises(ValueError, match="valid choices: pydoc, stdlib"):
    bytes_lib.bytes_config(8, "wiki")
  assert sources.is_embedded("jaxmtl_bytes/stdlib_seq128") and not sources.is_embedded("mnist")


def test_builder_config_by_name(data_dir):
  src = sources.get_source("jaxmtl_bytes/seq64", "train", data_dir)
  expect = bytes_lib.load_bytes_split(64)["train"]
  assert len(src) == len(expect)
  np.testing.assert_array_equal(src[5]["tokens"], expect[5])
  # The default config by kwargs (a new object named like a listed config) still resolves.
  assert len(sources.get_source("jaxmtl_bytes", "test", data_dir, seq_len=128)) == len(
      bytes_lib.load_bytes_split(128)["test"])
