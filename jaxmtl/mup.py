"""Parametrizations (SP, μP and variants) as per-parameter rules relative to base shapes.

A :class:`Parametrization` maps a parameter's role and shape (relative to the shape it has in a
*base* model) to a :class:`ParamRule`: the std of its normal init, its forward multiplier and the
multipliers the optimizer applies to its learning rate, Adam ε and weight decay. Rules live beside
the parameters: a pytree of ``ParamRule`` leaves mirrors the parameter pytree (the models attach a
rule to every ``nnx.Param`` as ``mup=`` metadata; ``jaxmtl.optim.make_optimizer`` consumes them).

Width multipliers are ``m_in = fan_in / base_fan_in`` and ``m_out = fan_out / base_fan_out``.
Flax kernels are ``[fan_in, fan_out]``; an embedding table ``[vocab, d]`` has ``fan_in = vocab``.
Which dims are "infinite" (width-like) is given by the role, as in microsoft/mup's ``InfShape``:

* ``"input"``  — finite fan-in, infinite fan-out (input layer, embeddings): vector-like.
* ``"hidden"`` — both dims infinite: matrix-like.
* ``"output"`` — infinite fan-in, finite fan-out (readout, task heads): vector-like, ``MuReadout``.
* ``"vector"`` — biases and norm gains of length ``fan_out`` (pass ``fan_in=1``): vector-like.

Parametrizations (``Parametrization.name``):

* ``"sp"``: standard parametrization. Init std ``σ/sqrt(fan_in)``, constant multipliers
  ``input_mult``/``output_mult``, all optimizer multipliers 1. Equals μP at the base shape.
* ``"mup"``: μP in microsoft/mup 1.0.0's multiplier form (Tensor Programs V, arXiv 2203.03466,
  Sec. 4 and App. B; ``mup/optim.py`` ``MuAdam``/``MuSGD``, ``mup/layer.py`` ``MuReadout``,
  ``mup/shape.py`` ``set_base_shapes(rescale_params=True)``). The readout keeps its base init std
  and is multiplied by ``output_mult / m_in`` in the forward pass. Adam: matrix-like lr ``/ m_in``.
  SGD: vector-like lr ``* m`` (m of its infinite dim), matrix-like lr ``* m_out / m_in``.
* ``"mup_tp5"``: the no-multiplier form of Tensor Programs V Table 3 (readout init std
  ``∝ 1/fan_in``; readout lr ``/ m_in`` for Adam and SGD). It is abc-equivalent to ``"mup"``
  (same function and same training trajectory; the readout Adam ε is scaled by ``m_in`` so that the
  equivalence is exact, not only as ε → 0).
* ``"depth_mup"``: ``"mup"`` plus residual branch multiplier ``(L / L_base)^-α`` and depth-scaled
  optimizer multipliers for parameters inside residual branches (Tensor Programs VI, Yang et al.
  arXiv 2310.02244, α = 1/2; Bordelon et al. arXiv 2309.16620; CompleteP, Dey et al.
  arXiv 2505.01618, α = 1). Adam-like: lr ``* (L/L_base)^(α-1)``, ε ``* (L/L_base)^-α``; SGD: lr
  ``* (L/L_base)^(2α-1)`` (CompleteP Table 1 / TP-VI Sec. 4). Pass ``depth=L`` to :meth:`rule`
  for the parameters of residual branches.

Init: PyTorch's default ``nn.Linear`` init (which microsoft/mup rescales) is
``kaiming_uniform(a=√5)``, i.e. std ``1/sqrt(3·fan_in)``. jaxmtl uses normal init with std
``init_std/sqrt(base_fan_in)`` at the base shape; the *ratio* of std across widths is exactly
microsoft/mup's (hidden ``m_in^-1/2``, input and readout constant). Biases and gains get std 0
(layers init biases to 0 and gains to 1), a width-constant choice like mup's rescaled biases.

Adam ε (``eps_mode``): ``"mup"`` keeps ε unscaled in the multiplier form (microsoft/mup 1.0.0);
``"everett"`` scales ε with each parameter's gradient scale (Everett et al. 2024,
arXiv 2407.05872, "per-layer ε"): ``1/m`` for every parameter with an infinite dim.

Weight decay (``weight_decay_mode``, applied by ``jaxmtl.optim``): ``"coupled"`` (L2 added to the
gradient) and ``"decoupled"`` (AdamW, ``wd·lr·lr_scale·θ``) use ``wd_scale = 1/lr_scale`` (width
part), as microsoft/mup's ``MuAdam``/``MuSGD`` scale ``weight_decay`` inversely to ``lr`` so the
per-step shrink ``lr·wd`` is width-independent; ``"independent"`` (``wd·θ``, not multiplied by
lr; Wortsman et al. 2023, lucaslingle/mu_transformer) uses ``wd_scale = 1``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax

ROLES = ("input", "hidden", "output", "vector")
NAMES = ("sp", "mup", "mup_tp5", "depth_mup")
OPTIMIZERS = ("adam", "adamw", "adam_atan2", "sgd", "lion")
WEIGHT_DECAY_MODES = ("coupled", "decoupled", "independent")
EPS_MODES = ("mup", "everett")
ATTN_MODES = ("base", "mup")


@dataclasses.dataclass(frozen=True)
class ParamRule:
  """Per-parameter rule; a pytree *leaf* (an unregistered dataclass, so JAX treats it as one).

  Attributes:
    role: one of ``ROLES``.
    init_std: std of the normal init (0.0: zero init; vectors: the layer picks mean 0 or 1).
    multiplier: forward multiplier, ``y = multiplier * (x @ W)``.
    lr_scale: per-parameter learning-rate multiplier.
    eps_scale: Adam ε multiplier (1.0 for SGD and Lion).
    wd_scale: weight-decay multiplier for the parametrization's weight-decay mode.
  """
  role: str
  init_std: float
  multiplier: float
  lr_scale: float
  eps_scale: float
  wd_scale: float


def _check(value: Any, choices: tuple, what: str) -> None:
  if value not in choices:
    raise ValueError(f"invalid {what} {value!r}; valid choices: {', '.join(choices)}")


def _positive(value: Any, what: str) -> None:
  if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
    raise ValueError(f"{what} must be a positive number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Parametrization:
  """A parametrization: maps (role, shape, base shape) to a :class:`ParamRule`.

  Attributes:
    name: ``"sp" | "mup" | "mup_tp5" | "depth_mup"`` (see module docstring).
    optimizer: ``"adam" | "sgd" | "lion"`` (``"adamw"``, ``"adam_atan2"`` count as adam).
    init_std: base init scale σ: matrix std is ``σ/sqrt(base_fan_in)`` at the base shape.
    output_mult: readout forward multiplier (μP: divided by ``m_in``).
    input_mult: input/embedding forward multiplier (width-independent).
    attn_mult: attention logit multiplier.
    zero_readout: zero-init the ``"output"`` role (TP-V Sec. D.2).
    zero_query: zero-init query projections (``rule(..., query=True)``; TP-V Sec. D.2).
    depth_alpha: depth-μP exponent α in the branch multiplier ``(L/L_base)^-α``, 0.5 or 1.
    base_depth: number of residual blocks of the base model; None (default): the model's own
      depth, so ``"depth_mup"`` equals ``"mup"`` until a base depth is given (as
      ``ModelConfig.base_width=None`` makes every parametrization equal SP at the model's width).
    weight_decay_mode: ``"coupled" | "decoupled" | "independent"``.
    eps_mode: ``"mup"`` (microsoft/mup: ε unscaled) or ``"everett"`` (ε ∝ gradient scale).
    attn_mode: ``"base"`` (``attn_mult·sqrt(base_d)/d``, equals ``1/sqrt(d)`` at base) or
      ``"mup"`` (microsoft/mup's examples/Transformer: ``attn_mult/d``).
  """
  name: str = "sp"
  optimizer: str = "adam"
  init_std: float = 1.0
  output_mult: float = 1.0
  input_mult: float = 1.0
  attn_mult: float = 1.0
  zero_readout: bool = False
  zero_query: bool = False
  depth_alpha: float = 1.0
  base_depth: int | None = None
  weight_decay_mode: str = "decoupled"
  eps_mode: str = "mup"
  attn_mode: str = "base"

  def __post_init__(self):
    _check(self.name, NAMES, "parametrization name")
    _check(self.optimizer, OPTIMIZERS, "optimizer")
    _check(self.weight_decay_mode, WEIGHT_DECAY_MODES, "weight_decay_mode")
    _check(self.eps_mode, EPS_MODES, "eps_mode")
    _check(self.attn_mode, ATTN_MODES, "attn_mode")
    if self.depth_alpha not in (0.5, 1.0):
      raise ValueError(f"invalid depth_alpha {self.depth_alpha!r}; valid choices: 0.5, 1.0")
    if self.base_depth is not None and (not isinstance(self.base_depth, int)
                                        or isinstance(self.base_depth, bool)
                                        or self.base_depth < 1):
      raise ValueError(f"base_depth must be None or a positive int, got {self.base_depth!r}")
    if not self.init_std >= 0:
      raise ValueError(f"init_std must be >= 0, got {self.init_std!r}")

  @property
  def is_mup(self) -> bool:
    return self.name != "sp"

  @property
  def optimizer_kind(self) -> str:
    """``"adam"`` for entrywise-normalized optimizers (Adam, AdamW, Adam-atan2, Lion), else sgd."""
    return "sgd" if self.optimizer == "sgd" else "adam"

  def rule(self, role: str, fan_in: int, fan_out: int, base_fan_in: int, base_fan_out: int,
           *, query: bool = False, depth: int | None = None) -> ParamRule:
    """The rule of one parameter.

    Args:
      role: one of ``ROLES``.
      fan_in, fan_out: this parameter's dims (kernel ``[fan_in, fan_out]``; vectors: ``fan_in=1``,
        ``fan_out`` = length).
      base_fan_in, base_fan_out: the same dims in the base model.
      query: the parameter is an attention query projection (zero-init when ``zero_query``).
      depth: number of residual blocks ``L`` when the parameter lives in a residual branch
        (only ``"depth_mup"`` uses it); None outside residual branches.
    """
    _check(role, ROLES, "role")
    for v, what in ((fan_in, "fan_in"), (fan_out, "fan_out"), (base_fan_in, "base_fan_in"),
                    (base_fan_out, "base_fan_out")):
      _positive(v, what)
    if depth is not None:
      _positive(depth, "depth")
    m_in = fan_in / base_fan_in
    m_out = fan_out / base_fan_out
    sgd = self.optimizer_kind == "sgd"
    base_std = self.init_std / math.sqrt(base_fan_in)
    lr, eps, mult = 1.0, 1.0, 1.0
    if role == "vector":
      std = 0.0
    elif not self.is_mup:
      std = self.init_std / math.sqrt(fan_in)
    else:
      std = base_std / math.sqrt(m_in) if role == "hidden" else base_std
    if role == "input":
      mult = self.input_mult
    elif role == "output":
      mult = self.output_mult
    if self.is_mup:
      if role == "hidden":
        lr = m_out / m_in if sgd else 1.0 / m_in
        eps = 1.0 / m_in
      elif role == "output":
        lr = m_in if sgd else 1.0
        eps = 1.0 / m_in
        mult = self.output_mult / m_in
        if self.name == "mup_tp5":  # abc-shift by θ = m_in (TP-V Sec. 3.3, Table 3)
          mult *= m_in
          std /= m_in
          lr /= m_in ** 2 if sgd else m_in
          eps *= m_in
      else:  # input, vector: one infinite dim, of size fan_out
        lr = m_out if sgd else 1.0
        eps = 1.0 / m_out
      if self.eps_mode == "mup":
        eps = m_in if (self.name == "mup_tp5" and role == "output") else 1.0
      if self.name == "depth_mup" and depth is not None:
        r = depth / (self.base_depth or depth)
        a = self.depth_alpha
        lr *= r ** (2 * a - 1) if sgd else r ** (a - 1)
        eps *= r ** -a
    if sgd or self.optimizer == "lion":
      eps = 1.0
    if (role == "output" and self.zero_readout) or (query and self.zero_query):
      std = 0.0
    wd = 1.0 if self.weight_decay_mode == "independent" else 1.0 / lr
    return ParamRule(role=role, init_std=float(std), multiplier=float(mult), lr_scale=float(lr),
                     eps_scale=float(eps), wd_scale=float(wd))

  def attention_scale(self, head_dim: int, base_head_dim: int) -> float:
    """Attention logit scale. SP: ``attn_mult/sqrt(d)``. μP (TP-V Sec. 4, Def. 4.1): 1/d scaling;
    ``attn_mode="base"``: ``attn_mult·sqrt(d_base)/d`` (equals SP at the base head dim),
    ``attn_mode="mup"``: ``attn_mult/d`` (microsoft/mup examples/Transformer)."""
    _positive(head_dim, "head_dim")
    _positive(base_head_dim, "base_head_dim")
    if not self.is_mup:
      return float(self.attn_mult / math.sqrt(head_dim))
    if self.attn_mode == "mup":
      return float(self.attn_mult / head_dim)
    # attn_mult/sqrt(d) * sqrt(d_base/d): exactly SP's value at the base head dim (the same
    # number written as sqrt(d_base)/d differs from 1/sqrt(d) in the last bit for some d).
    return float(self.attn_mult / math.sqrt(head_dim) * math.sqrt(base_head_dim / head_dim))

  def branch_multiplier(self, depth: int) -> float:
    """Residual branch multiplier ``(L/L_base)^-α`` for ``"depth_mup"``; 1.0 otherwise (and
    when ``base_depth`` is None: the model is its own base)."""
    _positive(depth, "depth")
    if self.name != "depth_mup" or self.base_depth is None:
      return 1.0
    return float((depth / self.base_depth) ** -self.depth_alpha)


def is_rule(x: Any) -> bool:
  """``is_leaf`` predicate for trees of rules: ``jax.tree.map(f, rules, is_leaf=is_rule)``."""
  return isinstance(x, ParamRule)


def _map(fn, rules: Any) -> Any:
  return jax.tree.map(fn, rules, is_leaf=is_rule)


def lr_multipliers(rules: Any) -> Any:
  """Pytree of per-parameter learning-rate multipliers (floats) from a pytree of rules."""
  return _map(lambda r: r.lr_scale, rules)


def eps_multipliers(rules: Any) -> Any:
  """Pytree of per-parameter Adam ε multipliers."""
  return _map(lambda r: r.eps_scale, rules)


def wd_multipliers(rules: Any) -> Any:
  """Pytree of per-parameter weight-decay multipliers."""
  return _map(lambda r: r.wd_scale, rules)


def init_stds(rules: Any) -> Any:
  """Pytree of per-parameter init stds."""
  return _map(lambda r: r.init_std, rules)


def multipliers(rules: Any) -> Any:
  """Pytree of per-parameter forward multipliers."""
  return _map(lambda r: r.multiplier, rules)
