"""The train state and its creation, already sharded, on a mesh."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmtl import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. A pytree; checkpointed whole by orbax.

  Attributes:
    step: int32 scalar.
    params: pure nested dict of parameter arrays.
    opt_state: optax state.
    mtl_state: state of the loss weighting / gradient aggregation (may be ()).
    rng: uint32[2] raw key data (saved as a plain array); folded with the step.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  mtl_state: Any
  rng: jax.Array


def state_shardings(abstract_state: TrainState, param_shardings: Any,
                    optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings for every leaf: params by the rules, optimizer state like its params."""
  repl = NamedSharding(mesh, P())
  opt = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_state.opt_state, param_shardings,
      transform_non_params=lambda _: repl)
  return TrainState(step=repl, params=param_shardings, opt_state=opt,
                    mtl_state=jax.tree.map(lambda _: repl, abstract_state.mtl_state),
                    rng=repl)


def make_init(model_fn: Callable[[nnx.Rngs], nnx.Module], optimizer: optax.GradientTransformation,
              mtl_init: Callable[[Any], Any], seed: int):
  """Returns init(key) -> TrainState, to be jitted with out_shardings.

  Parameters are created inside the jit and constrained to their sharding
  right away, so XLA materialises only each device's shard (threefry is
  partitionable), never a full array per device.
  """
  def init(param_shardings) -> TrainState:
    key = jax.random.key(seed)
    model = model_fn(nnx.Rngs(params=jax.random.fold_in(key, 0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if param_shardings is not None:
      params = jax.lax.with_sharding_constraint(params, param_shardings)
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=optimizer.init(params), mtl_state=mtl_init(params),
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)))
  return init


def create_state(model_fn, optimizer, mtl_init, seed: int, param_axes: Any, mesh: Mesh,
                 rules: mesh_lib.Rules) -> tuple[TrainState, TrainState]:
  """(state, state shardings): a freshly initialised, sharded TrainState."""
  abstract = abstract_state(model_fn, optimizer, mtl_init, seed)
  param_sh = mesh_lib.tree_shardings(param_axes, abstract.params, rules, mesh)
  shardings = state_shardings(abstract, param_sh, optimizer, mesh)
  init = make_init(model_fn, optimizer, mtl_init, seed)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda: init(param_sh), out_shardings=shardings)()
  return state, shardings


def abstract_state(model_fn, optimizer, mtl_init, seed: int) -> TrainState:
  init = make_init(model_fn, optimizer, mtl_init, seed)
  return jax.eval_shape(lambda: init(None))


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings (restore targets for orbax)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
