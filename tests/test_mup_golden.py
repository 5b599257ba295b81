"""Golden values: the loss of small μP models at init and after one Adam step (fixed seed,
fixed synthetic batch) is pinned, so an unintended change of the parametrization, the init,
the per-parameter optimizer multipliers or the models fails here. The values were produced by
this code (jaxmtl, μP in microsoft/mup 1.0.0's multiplier form, TP-V arXiv 2203.03466) and
checked against the coordinate check (tests/test_coord_check.py) when pinned; the rule values
themselves are pinned against microsoft/mup in tests/test_mup.py.
"""
import math

import numpy as np
import pytest

from jaxmtl import config as config_lib
from jaxmtl import mup_tools
from jaxmtl.models import abstract_model

RTOL = 2e-6


def _cfg(family: str, **over) -> config_lib.ExperimentConfig:
  c = config_lib.default_config()
  if family == "mlp":
    c.model.update(name="mlp", width=64, base_width=32, depth=3, activation="relu")
    c.data.name = "jaxmtl_multidigits"
  else:
    c.model.update(name="transformer", width=32, base_width=16, depth=2, num_heads=4,
                   max_len=32)
    c.data.name = "jaxmtl_bytes"
  c.mup.name = "mup"
  c.seed = 0
  c.optim.update(name="adam", lr=1e-2, schedule="constant", weight_decay=0.0)
  config_lib.apply_overrides(c, over)
  return config_lib.experiment_config(c)


def _batches():
  rng = np.random.default_rng(0)
  mlp = {"image": rng.integers(0, 256, (8, 16, 16, 1)).astype(np.uint8),
         "label_left": rng.integers(0, 10, 8), "label_right": rng.integers(0, 10, 8)}
  lm = {"tokens": rng.integers(0, 256, (2, 17)).astype(np.uint8)}
  return {"mlp": mlp, "transformer": lm}


# family: (width, [loss at init, loss after one Adam step]) — sum over tasks for the MLP.
GOLDEN = {
    "mlp": (64, [4.7013959884643555, 4.392738342285156]),
    "transformer": (32, [5.677829742431641, 4.819913387298584]),
}


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_one_step_loss_is_pinned(family):
  width, expected = GOLDEN[family]
  d = mup_tools.coord_data(_cfg(family), [width], 2, _batches()[family])
  np.testing.assert_allclose(d["loss"][0], expected, rtol=RTOL)


def test_sp_differs_from_mup_off_base():
  """Same seed and batch under SP gives another trajectory (the pin above is μP-specific)."""
  width, expected = GOLDEN["mlp"]
  d = mup_tools.coord_data(_cfg("mlp", **{"mup.name": "sp"}), [width], 2, _batches()["mlp"])
  assert abs(d["loss"][0][1] - expected[1]) > 1e-3


@pytest.mark.parametrize("width", [64, 256, 1024])
def test_config_flag_switches_parametrization(width):
  """`--config.mup.name=mup` (an override of the config) changes the rules the model is built
  with, as the μP table says (base width 64, m = width/64, Adam)."""
  rules = {}
  for name in ("sp", "mup"):
    cfg = _cfg("mlp", **{"mup.name": name, "model.width": width, "model.base_width": 64})
    _, params, _, rules[name] = abstract_model(cfg.model, (16, 16, 1), {"left": 10, "right": 10},
                                               cfg.mup)
  m = width / 64
  sp_h, mup_h = rules["sp"]["layers"][1]["kernel"], rules["mup"]["layers"][1]["kernel"]
  sp_o, mup_o = rules["sp"]["heads"]["heads"]["left"]["kernel"], \
      rules["mup"]["heads"]["heads"]["left"]["kernel"]
  # Hidden kernel: init std 1/sqrt(fan_in) in both; μP lr multiplier 1/m.
  assert sp_h.init_std == pytest.approx(1 / math.sqrt(width))
  assert mup_h.init_std == pytest.approx(1 / math.sqrt(64) / math.sqrt(m))
  assert (sp_h.lr_scale, mup_h.lr_scale) == (1.0, pytest.approx(1 / m))
  # Readout: μP keeps the base init std and multiplies the output by 1/m.
  assert sp_o.init_std == pytest.approx(1 / math.sqrt(width))
  assert mup_o.init_std == pytest.approx(1 / 8.0)
  assert (sp_o.multiplier, mup_o.multiplier) == (1.0, pytest.approx(1 / m))


def test_init_follows_rule():
  """The sampled hidden kernel has the rule's std (width 512, μP base 64)."""
  import jax
  from flax import nnx
  from jaxmtl.models import make_model
  cfg = _cfg("mlp", **{"model.width": 512, "model.base_width": 64})
  model = make_model(cfg.model, (16, 16, 1), {"left": 10, "right": 10}, cfg.mup,
                     nnx.Rngs(params=jax.random.key(0)))
  k = np.asarray(model.layers[1].kernel[...])
  assert k.std() == pytest.approx(1 / math.sqrt(512), rel=0.01)
  h = np.asarray(model.heads.heads["left"].kernel[...])
  assert h.std() == pytest.approx(1 / 8.0, rel=0.05)
