"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """Path to ../shared/data; skips the test cleanly where it is absent."""
  if not SHARED_DATA.exists():
    pytest.skip("../shared/data is not present on this machine")
  return SHARED_DATA


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir shared by the session; embedded datasets build into it on first use."""
  path = tmp_path_factory.mktemp("tfds")
  os.environ["JAXMTL_DATA_DIR"] = str(path)
  return str(path)
