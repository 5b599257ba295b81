"""jaxmtl's μP trains like microsoft/mup 1.0.0: same weights and batches, same trajectory.

tests/test_mup.py pins the rules; this pins their effect in the trained model. Golden data:
tests/golden/mup_trajectory.npz from tests/golden/make_mup_trajectory.py (PyTorch MLP with
``MuReadout`` heads, ``set_base_shapes``, ``MuAdam`` / ``MuAdam(impl=AdamW)`` / ``MuSGD``;
base width 16, widths 16 and 64, output_mult 2, six steps). jaxmtl runs its own MLP
(``jaxmtl.models.MLP``), its loss (``train.step.make_loss_fn``, sum over the two tasks) and
``optim.make_optimizer`` with the model's μP rules from the same initial weights.
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmtl import mup, optim
from jaxmtl import tasks as tasks_lib
from jaxmtl.models import ModelConfig, abstract_model
from jaxmtl.train.step import make_loss_fn

GOLDEN = pathlib.Path(__file__).parent / "golden" / "mup_trajectory.npz"
D_IN, BASE, OUTPUT_MULT = 24, 16, 2.0
SPEC = tasks_lib.DataSpec("ref", "x", (D_IN,), None,
                          (tasks_lib.Task("left", "left", 10), tasks_lib.Task("right", "right", 10)))
# torch impl -> (jaxmtl optimizer, weight-decay mode): torch Adam/SGD weight_decay is L2 in
# the gradient ("coupled"), AdamW's is decoupled.
IMPLS = {"Adam": ("adam", "coupled"), "AdamW": ("adamw", "decoupled"), "SGD": ("sgd", "coupled")}


@pytest.fixture(scope="module")
def golden():
  return np.load(GOLDEN)


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _setup(golden, case: str, width: int):
  _, impl, kw = json.loads(str(golden["cases"]))[case]
  name, wd_mode = IMPLS[impl]
  p = mup.Parametrization(name="mup", optimizer=name, init_std=1 / math.sqrt(3),
                          output_mult=OUTPUT_MULT, weight_decay_mode=wd_mode)
  mcfg = ModelConfig(name="mlp", width=width, base_width=BASE, depth=3, activation="relu")
  graphdef, abstract, _, rules = abstract_model(mcfg, (D_IN,), {"left": 10, "right": 10}, p)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.asarray(golden[f"w{width}/{_path(path)}"], a.dtype), abstract)
  b1, b2 = kw.get("betas", (0.9, 0.999))
  # torch decays every parameter, biases included: decay_vectors=True.
  ocfg = optim.OptimizerConfig(name=name, lr=kw["lr"], b1=b1, b2=b2, eps=kw.get("eps", 1e-8),
                               momentum=kw.get("momentum", 0.0),
                               weight_decay=kw.get("weight_decay", 0.0),
                               weight_decay_mode=wd_mode, decay_vectors=True)
  return graphdef, params, rules, optim.make_optimizer(ocfg, rules)


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("case", ["adam", "adam_l2", "adamw", "sgd"])
def test_trajectory_matches_microsoft_mup(golden, case, width):
  graphdef, params, rules, tx = _setup(golden, case, width)
  loss_fn = make_loss_fn(graphdef, SPEC)

  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda q: jnp.sum(loss_fn(q, batch)[0]))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state, params0, losses = tx.init(params), params, []
  for t in range(golden["batch_x"].shape[0]):
    batch = {"x": golden["batch_x"][t], "left": golden["batch_left"][t],
             "right": golden["batch_right"][t]}
    params, state, loss = step(params, state, batch)
    losses.append(float(loss))
  ref = golden[f"loss/{case}/w{width}"]
  assert ref[-1] < ref[0] - 0.1  # the reference run trains
  np.testing.assert_allclose(losses, ref, rtol=2e-5)
  # Per parameter: how far it moved, mean |θ_T - θ_0| (checks each lr multiplier separately).
  moved = jax.tree_util.tree_map_with_path(
      lambda path, a, b: (_path(path), float(jnp.abs(a - b).mean())), params, params0)
  for name, value in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
    np.testing.assert_allclose(value, golden[f"delta/{case}/w{width}/{name}"], rtol=2e-3,
                               err_msg=name)


def test_init_stds_are_microsoft_mups(golden):
  """With init_std = 1/sqrt(3), jaxmtl's rules give the std of mup's rescaled torch init."""
  for width in (16, 64):
    _, _, rules, _ = _setup(golden, "adam", width)
    for path, rule in jax.tree_util.tree_flatten_with_path(rules, is_leaf=mup.is_rule)[0]:
      name = _path(path)
      if name.endswith("kernel"):
        w = golden[f"w{width}/{name}"]
        # torch's uniform init; sample std of >= 240 entries is within ~10%.
        assert w.std() == pytest.approx(rule.init_std, rel=0.12), name
