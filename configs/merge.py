"""Merge config for ``jaxmtl-merge --config configs/merge.py[:METHOD]``.

``METHOD`` (default ``task_arithmetic``) is any ``jaxmtl.merging`` method; ``config.options``
holds that method's keyword options with their library defaults (so every one can be
overridden, e.g. ``--config.options.density=0.3``). Example::

  jaxmtl-merge --config configs/merge.py:ties --config.pretrained=base.safetensors \
    --config.finetuned=a.safetensors,b.safetensors --config.output=merged.safetensors \
    --config.options.density=0.2 --config.options.trim_scope=tensor

``:runlocal`` suffixes are accepted (``ties,runlocal``) and change nothing: a merge has no
model size to shrink.
"""
import inspect

import ml_collections

_NOT_OPTIONS = {"task_vectors", "exclude", "key", "finetuned", "pretrained"}


def method_options(method: str) -> dict:
  """Keyword options of ``jaxmtl.merging.<method>`` with their defaults (None -> '')."""
  import jaxmtl.merging as merging  # pylint: disable=g-import-not-at-top
  if not hasattr(merging, method) or method.startswith("_"):
    raise ValueError(f"unknown merge method {method!r}; valid: {sorted(merging.__all__)}")
  sig = inspect.signature(getattr(merging, method))
  out = {}
  for name, p in sig.parameters.items():
    if p.kind is not p.KEYWORD_ONLY or name in _NOT_OPTIONS:
      continue
    d = p.default
    if d is None or isinstance(d, (str, int, float, bool)):
      out[name] = d
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [a for a in (arg or "").split(",") if a and a != "runlocal"]
  method = parts[0] if parts else "task_arithmetic"
  c = ml_collections.ConfigDict()
  c.method = method
  c.pretrained = ""          # checkpoint path: *.safetensors, *.npz or an orbax directory
  c.finetuned = ""           # comma-separated checkpoint paths
  c.output = ""              # *.safetensors / *.npz (streamed) or an orbax directory
  c.report = ""              # JSON report path; default: <output>.report.json
  c.exclude = ""             # comma-separated path regexes of leaves not merged
  c.streaming = "auto"       # "auto", "true" (raise if the method cannot stream), "false"
  c.seed = 0                 # PRNG seed for methods that take `key` (dare, della)
  c.progress = True
  # Options with a None default may be set to a string on the command line.
  c.options = ml_collections.ConfigDict(method_options(method), type_safe=False)
  return c
