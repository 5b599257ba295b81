"""Config files -> validated, frozen dataclasses.

An experiment is an `ml_collections` config file with `get_config(arg)` (see
`configs/`). Entry points load it (with command-line overrides), and call
`to_dataclass` to turn the ConfigDict into typed, frozen dataclasses before any
library code sees it. Validation happens here, once:

* unknown keys are rejected, naming the key path and the valid keys (with a
  "did you mean" suggestion);
* fields annotated with `typing.Literal[...]` reject values outside the choices,
  naming the key, the value and the valid choices;
* dataclasses that validate themselves in `__post_init__` (e.g.
  `jaxmtl.mup.Parametrization`) have their `ValueError` re-raised with the key
  path prefixed.

Nothing here reads flags; `load_config` is called by `jaxmtl.cli`.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import pathlib
import types
import typing
from typing import Any, Literal, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config key or value is invalid. The message names the key path."""


def _suggest(name: str, valid: list[str]) -> str:
  close = difflib.get_close_matches(name, valid, n=1)
  return f" Did you mean {close[0]!r}?" if close else ""


def _is_dataclass_type(tp: Any) -> bool:
  return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, path: str) -> Any:
  """Converts one config value to the annotated type `tp`, validating it."""
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if _is_dataclass_type(tp):
    return to_dataclass(tp, value, path)
  if origin is typing.Literal:
    if value not in args:
      raise ConfigError(
          f"config key {path!r}: invalid value {value!r}; valid choices are "
          f"{list(args)}.{_suggest(str(value), [str(a) for a in args])}")
    return value
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _convert(arg, value, path)
      except (ConfigError, TypeError, ValueError) as e:
        errors.append(str(e))
    raise ConfigError(f"config key {path!r}: value {value!r} matches none of "
                      f"{tp}: {'; '.join(errors)}")
  if origin is tuple:
    if isinstance(value, str):
      value = tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"config key {path!r}: expected a tuple, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
      if args[0] is str:  # --config.data.tasks=a,b arrives as ("a,b",): split it
        value = tuple(p.strip() for v in value for p in (v.split(",") if isinstance(v, str)
                                                         else [v]) if not isinstance(p, str)
                      or p.strip())
      return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
      raise ConfigError(f"config key {path!r}: expected {len(args)} values, got {value!r}")
    return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"config key {path!r}: expected a number, got {value!r}")
    return float(value)
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      raise ConfigError(f"config key {path!r}: expected an integer, got {value!r}")
    return value
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"config key {path!r}: expected true/false, got {value!r}")
    return value
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f"config key {path!r}: expected a string, got {value!r}")
    return value
  return value  # Any and un-annotated: passed through.


def to_dataclass(cls: type, cfg: Mapping[str, Any] | None, path: str = "config"):
  """Builds dataclass `cls` from a (nested) mapping, validating keys and values.

  Args:
    cls: a dataclass type whose fields may themselves be dataclasses.
    cfg: a ConfigDict / dict; missing keys take the dataclass defaults.
    path: the key path used in error messages (e.g. "config.model").

  Raises:
    ConfigError: naming the key path, the value and the valid keys or choices.
  """
  if cfg is None:
    cfg = {}
  if isinstance(cfg, ml_collections.ConfigDict):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ConfigError(f"config key {path!r}: expected a mapping for {cls.__name__}, got {cfg!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  valid = sorted(fields)
  for key in cfg:
    if key not in fields:
      raise ConfigError(f"unknown config key '{path}.{key}'. Valid keys under "
                        f"{path!r}: {valid}.{_suggest(key, valid)}")
  kwargs = {k: _convert(hints[k], v, f"{path}.{k}") for k, v in cfg.items()}
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config key {path!r}: {e}") from e


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Loads `file.py[:arg]` and calls its `get_config(arg)` (arg may be absent)."""
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem, file)
  if spec is None or spec.loader is None or not pathlib.Path(file).exists():
    raise ConfigError(f"config file {file!r} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Applies `{"a.b": value}` overrides in place; unknown keys name valid ones."""
  for dotted, value in overrides.items():
    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
      keys = sorted(node.keys())
      if part not in keys:
        where = "config." + ".".join(parts[:i]) if i else "config"
        raise ConfigError(f"unknown config key 'config.{dotted}'. Valid keys under "
                          f"{where!r}: {keys}.{_suggest(part, keys)}")
      if i < len(parts) - 1:
        node = node[part]
    with cfg.unlocked():
      node[parts[-1]] = value


def to_json(obj: Any) -> str:
  """Serialises a dataclass / ConfigDict tree to JSON (for the workdir)."""
  def default(o):
    if dataclasses.is_dataclass(o):
      return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if isinstance(o, ml_collections.ConfigDict):
      return o.to_dict()
    return repr(o)
  if isinstance(obj, ml_collections.ConfigDict):
    obj = obj.to_dict()
  return json.dumps(obj, default=default, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------
# The experiment: one frozen dataclass tree, built from the ConfigDict.
# ----------------------------------------------------------------------------
from jaxmtl.mesh import MeshConfig  # noqa: E402
from jaxmtl.models.config import ModelConfig  # noqa: E402
from jaxmtl.mup import Parametrization  # noqa: E402
from jaxmtl.optim import OptimizerConfig  # noqa: E402
from jaxmtl.train.combine import MTLConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Dataset by name (embedded `jaxmtl_*` builders or any prepared TFDS dataset)."""
  name: str = "jaxmtl_multidigits"
  data_dir: str | None = None
  tasks: tuple[str, ...] = ()          # empty: every task of the dataset (or mixture)
  batch_size: int = 128                # global batch size
  eval_batch_size: int = 512
  eval_split: str = "test"
  shuffle_buffer_seed: int | None = None  # None: use the experiment seed
  # Several datasets trained jointly (one head per task; `name` is then unused): every batch
  # mixes their examples with probabilities by size, temperature (p ∝ n^(1/T)) or uniform.
  mixture: tuple[str, ...] = ()
  mixture_mode: Literal["proportional", "temperature", "uniform"] = "proportional"
  mixture_temperature: float = 2.0

  @property
  def datasets(self) -> tuple[str, ...]:
    """The datasets this run reads: the mixture's, or (name,)."""
    return self.mixture or (self.name,)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Durations are in steps."""
  steps: int = 1000
  log_every: int = 50
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  progress: bool = True
  stop_on_nan: bool = True
  plot: bool = True
  # Logged steps also get update_rms (RMS of the optimizer update): it makes XLA write the
  # update out instead of fusing it into the parameter update, ~6% of a small model's CPU
  # step, so it is opt-in. grad_norm and param_rms are computed on logged steps only.
  log_update_rms: bool = False
  # Warm start (fine-tuning): parameters whose path and shape match are taken from another
  # run's latest checkpoint (its workdir or checkpoints dir), an orbax step, or a params file
  # (*.npz, *.safetensors, orbax PyTree dir); the rest (e.g. new task heads) start fresh.
  # Ignored when the workdir has its own checkpoint (resume wins).
  init_from: str | None = None
  init_exclude: str = ""               # regex (fullmatch on "a/b/c") of paths to keep fresh


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  seed: int = 0
  model: ModelConfig = ModelConfig()
  mup: Parametrization = Parametrization()
  optim: OptimizerConfig = OptimizerConfig()
  data: DataConfig = DataConfig()
  mesh: MeshConfig = MeshConfig()
  train: TrainConfig = TrainConfig()
  mtl: MTLConfig = MTLConfig()


def experiment_config(cfg: Mapping[str, Any]) -> ExperimentConfig:
  """ConfigDict -> validated ExperimentConfig. The μP rules follow the optimizer's name and
  weight-decay mode (`optim.name`, `optim.weight_decay_mode`): they must agree, and the
  optimizer is what users set."""
  exp = to_dataclass(ExperimentConfig, cfg)
  sync = {"optimizer": exp.optim.name, "weight_decay_mode": exp.optim.weight_decay_mode}
  if any(getattr(exp.mup, k) != v for k, v in sync.items()):
    exp = dataclasses.replace(exp, mup=dataclasses.replace(exp.mup, **sync))
  return exp


def default_config(cls: type = ExperimentConfig) -> ml_collections.ConfigDict:
  """The full ConfigDict of a dataclass's defaults: every key exists, so every key
  can be overridden on the command line. Optional fields default to typed placeholders."""
  from ml_collections.config_dict import placeholder
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    value = getattr(cls(), f.name) if f.default is dataclasses.MISSING else f.default
    tp = hints[f.name]
    if _is_dataclass_type(tp):
      out[f.name] = default_config(tp)
    elif value is None:
      inner = [a for a in typing.get_args(tp) if a is not type(None)]
      base = typing.get_origin(inner[0]) or inner[0] if inner else object
      out[f.name] = placeholder(base if isinstance(base, type) else object)
    else:
      out[f.name] = value
  return ml_collections.ConfigDict(out)
