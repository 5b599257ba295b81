"""Every MTL method runs inside the sharded, jitted train step from config."""
import dataclasses

import jax
import numpy as np
import pytest

from jaxmtl.mtl import aggregators as agg_lib
from jaxmtl.mtl import weighting as w_lib
from tests.helpers import tiny_config
from tests.test_sharding import _run_steps

WEIGHTINGS = sorted(set(w_lib.WEIGHTINGS) - {"equal"}) + ["sum", "mean"]
AGGREGATORS = sorted(agg_lib.AGGREGATORS)


def _check(losses, n_tasks=2):
  assert losses.shape == (2, n_tasks) and np.isfinite(losses).all()


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_loss_weightings_train(data_dir, name):
  cfg = tiny_config(data_dir, **{"mtl.weighting": name})
  losses, _ = _run_steps(cfg, jax.devices()[:1], 2)
  _check(losses)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregators_train(data_dir, name):
  cfg = tiny_config(data_dir, **{"mtl.aggregator": name})
  losses, params = _run_steps(cfg, jax.devices()[:1], 2)
  _check(losses)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# Every mode of every kind of aggregator is checked against a direct computation on a small
# pure-jnp model in test_mtl_combine.py; here one through the real step.
@pytest.mark.parametrize("name", ["upgrad"])
def test_gramian_only_equals_full_jacobian(data_dir, name):
  full = tiny_config(data_dir, **{"mtl.aggregator": name, "mtl.jacobian": "full"})
  gram = tiny_config(data_dir, **{"mtl.aggregator": name, "mtl.jacobian": "gramian"})
  l1, p1 = _run_steps(full, jax.devices()[:1], 2)
  l2, p2 = _run_steps(gram, jax.devices()[:1], 2)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p2)


@pytest.mark.parametrize("over", [{"mtl.aggregator": "mgda"}, {"mtl.aggregator": "graddrop"},
                                  {"mtl.weighting": "gradnorm"}], ids=lambda o: str(o))
def test_features_mode_trains(data_dir, over):
  cfg = tiny_config(data_dir, **over, **{"mtl.mode": "features"})
  losses, _ = _run_steps(cfg, jax.devices()[:1], 2)
  _check(losses)


def test_invalid_mode_combinations_are_config_errors(data_dir):
  from jaxmtl.config import ConfigError
  with pytest.raises(ConfigError, match="needs the full Jacobian"):
    tiny_config(data_dir, **{"mtl.aggregator": "graddrop", "mtl.jacobian": "gramian"})
  with pytest.raises(ConfigError, match="db_mtl"):
    tiny_config(data_dir, **{"mtl.weighting": "db_mtl", "mtl.jacobian": "gramian"})
  with pytest.raises(ConfigError, match="mode='features'"):
    tiny_config(data_dir, **{"mtl.weighting": "famo", "mtl.mode": "features"})


@pytest.mark.parametrize("jac", ["full", "gramian"])
def test_aggregation_8_devices_equals_1(data_dir, jac):
  """Data-parallel Gramian = Gramian of globally reduced per-task gradients."""
  cfg = tiny_config(data_dir, **{"mtl.aggregator": "upgrad", "mtl.jacobian": jac,
                                 "mesh.shape": (8, 1, 1)})
  one = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=(1, 1, 1)))
  l8, p8 = _run_steps(cfg, jax.devices(), 2)
  l1, p1 = _run_steps(one, jax.devices()[:1], 2)
  np.testing.assert_allclose(l8, l1, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), p8, p1)


def test_bad_method_names(data_dir):
  from jaxmtl.config import ConfigError
  with pytest.raises(ConfigError, match="valid choices"):
    tiny_config(data_dir, **{"mtl.aggregator": "pcgard"})
  with pytest.raises(ConfigError, match="not both"):
    tiny_config(data_dir, **{"mtl.aggregator": "mgda", "mtl.weighting": "uw"})
