"""``jaxmtl-merge``: merge checkpoint files, from a jaxmtl config or a mergekit YAML recipe.

Two ways in (the only place in jaxmtl that parses flags for merging)::

  jaxmtl-merge --config configs/merge.py:ties --config.pretrained=base.safetensors \
      --config.finetuned=a.safetensors,b.safetensors --config.output=out.safetensors \
      --config.options.density=0.2
  jaxmtl-merge --mergekit recipe.yaml --output out.safetensors [--report out.json]

Both end in :func:`jaxmtl.merging.out_of_core.merge_checkpoints` (leaf by leaf where the
method allows, with a progress bar over leaves) and write the merged checkpoint plus a JSON
report (method, options, per-leaf nonzero fraction of ``merged - base``, timings). Compiled XLA
programs are kept in a persistent cache (``--compilation_cache``, default
``~/.cache/jaxmtl/xla``), so a later in-memory merge of models of the same shapes skips
compilation (8 of the 12 s of a first in-memory global TIES call on 8 x 100M entries).

mergekit recipes (``merge_method``, ``base_model``, ``models: [{model, parameters}]``,
``parameters``, ``dtype``) are mapped onto jaxmtl options by :func:`from_mergekit`, following
mergekit's conventions (``ties``: per-tensor magnitude top-k, ``normalize`` -> disjoint mean;
``dare_*``: L1 rescale; ``lambda`` -> ``scaling``). Model paths are local checkpoints
(``*.safetensors``, ``*.npz``, an orbax directory, or a directory holding
``model.safetensors``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}
_MODEL_KEYS = {"model", "parameters"}
_GTA = {"normalize", "rescale", "int8_mask", "lambda"}
# merge_method -> (jaxmtl method, sign election, per-model parameters, defaults), following
# mergekit's registry (GeneralizedTaskArithmeticMerge: default_normalize / default_rescale).
_METHODS: dict[str, tuple[str, bool, set[str], dict[str, Any]]] = {
  "linear": ("weight_average", False, {"weight"}, {"normalize": True}),
  "task_arithmetic": ("task_arithmetic", False, {"weight"}, {"normalize": False,
                                                            "rescale": False}),
  "ties": ("ties", True, {"weight", "density"}, {"normalize": True, "rescale": False}),
  "dare_ties": ("dare", True, {"weight", "density"}, {"normalize": False, "rescale": True}),
  "dare_linear": ("dare", False, {"weight", "density"}, {"normalize": False, "rescale": True}),
  "breadcrumbs": ("breadcrumbs", False, {"weight", "density", "gamma"},
                  {"normalize": False, "rescale": False}),
  "breadcrumbs_ties": ("breadcrumbs", True, {"weight", "density", "gamma"},
                       {"normalize": False, "rescale": False}),
  "della": ("della", True, {"weight", "density", "epsilon", "lambda"},
            {"normalize": True, "rescale": True}),
  "della_linear": ("della", False, {"weight", "density", "epsilon", "lambda"},
                   {"normalize": False, "rescale": True}),
}
_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _resolve_path(p: str, base_dir: str) -> str:
  p = os.path.expanduser(p)
  p = p if os.path.isabs(p) else os.path.join(base_dir, p)
  if os.path.isdir(p) and os.path.exists(os.path.join(p, "model.safetensors")):
    return os.path.join(p, "model.safetensors")
  if not os.path.exists(p):
    raise ValueError(f"checkpoint {p!r} does not exist (mergekit recipes here take local "
                     "*.safetensors / *.npz files or orbax directories, not hub names)")
  return p


def _same(name: str, values: list[Any], method: str) -> Any:
  if any(v != values[0] for v in values):
    raise ValueError(f"merge_method {method!r}: per-model {name!r} must be equal for all models "
                     f"in jaxmtl (one {name} for every task vector), got {values}")
  return values[0]


def from_mergekit(recipe: Mapping[str, Any], base_dir: str = ".") -> dict[str, Any]:
  """Maps a mergekit YAML recipe onto ``merge_checkpoints`` arguments.

  Returns ``{"method", "pretrained", "finetuned", "options", "notes"}``. Raises ValueError
  naming the key and the valid ones for anything unsupported.
  """
  if not isinstance(recipe, Mapping):
    raise ValueError(f"a mergekit recipe is a YAML mapping, got {type(recipe).__name__}")
  bad = set(recipe) - _TOP_KEYS
  if bad:
    raise ValueError(f"unsupported recipe keys {sorted(bad)}; valid: {sorted(_TOP_KEYS)}")
  mk = recipe.get("merge_method")
  if mk not in _METHODS:
    raise ValueError(f"merge_method {mk!r} is not supported; valid: {sorted(_METHODS)}")
  method, elect, model_keys, defaults = _METHODS[mk]
  global_keys = {"normalize"} if mk == "linear" else _GTA
  models = recipe.get("models") or []
  if not isinstance(models, list) or not models:
    raise ValueError("recipe key 'models' must be a non-empty list of {model, parameters}")
  notes = []
  params = {**defaults, **(recipe.get("parameters") or {})}
  bad = set(params) - global_keys
  if bad:
    raise ValueError(f"merge_method {mk!r}: unsupported parameters {sorted(bad)}; valid: "
                     f"{sorted(global_keys)}")
  tensor_defaults = {"weight": None, "density": 1.0, "gamma": 0.01, "epsilon": 0.15,
                     "lambda": params.get("lambda", 1.0)}
  paths, per = [], {k: [] for k in model_keys}
  for i, m in enumerate(models):
    if not isinstance(m, Mapping) or "model" not in m:
      raise ValueError(f"models[{i}] must be a mapping with key 'model'")
    bad = set(m) - _MODEL_KEYS
    if bad:
      raise ValueError(f"models[{i}]: unsupported keys {sorted(bad)}; valid: {sorted(_MODEL_KEYS)}")
    mp = m.get("parameters") or {}
    bad = set(mp) - model_keys
    if bad:
      raise ValueError(f"models[{i}] ({m['model']}): unsupported parameters {sorted(bad)} for "
                       f"{mk!r}; valid: {sorted(model_keys)}")
    if "weight" not in mp:
      raise ValueError(f"models[{i}] ({m['model']}): parameter 'weight' is required "
                       "(as in mergekit)")
    paths.append(_resolve_path(str(m["model"]), base_dir))
    for k in model_keys:
      per[k].append(mp.get(k, tensor_defaults[k]))
  base = recipe.get("base_model")
  if base is None:
    if method != "weight_average":
      raise ValueError(f"merge_method {mk!r} needs 'base_model'")
    pretrained = paths[0]
  else:
    pretrained = _resolve_path(str(base), base_dir)
  for dk in ("dtype", "out_dtype"):
    if dk in recipe:
      if recipe[dk] not in _DTYPES:
        raise ValueError(f"{dk} {recipe[dk]!r} is not supported; valid: {list(_DTYPES)}")
      notes.append(f"{dk}={recipe[dk]} ignored: arithmetic runs in float32 (float64 for float64 "
                   "leaves) and the output keeps the base model's leaf dtypes")
  if params.pop("int8_mask", None):
    notes.append("int8_mask ignored (a mergekit memory optimisation; masks here are bool)")
  normalize = bool(params.pop("normalize"))
  weights = [float(w) for w in per["weight"]]
  if method == "weight_average":
    if not normalize and abs(sum(weights) - 1.0) > 1e-6:
      raise ValueError("linear with normalize: false needs weights summing to 1 in jaxmtl "
                       f"(weight_average normalises), got {weights}")
    return {"method": method, "pretrained": pretrained, "finetuned": paths,
            "options": {"weights": weights}, "notes": notes, "mergekit": dict(recipe)}
  w = _same("weight", weights, mk)
  lam = float(_same("lambda", per["lambda"], mk)) if "lambda" in per else float(
    params.pop("lambda", 1.0))
  rescale = bool(params.pop("rescale", False))
  if rescale and method in ("ties", "breadcrumbs"):
    raise ValueError(f"merge_method {mk!r}: rescale: true is not supported (jaxmtl {method} "
                     "does not rescale); valid: rescale: false")
  # mergekit: base + lambda * sum_t w_t m_t tau_t / (sum_t w_t m_t if normalize else 1); with
  # equal weights w the weights cancel under normalize, and scale by w otherwise.
  scaling = lam if normalize else lam * w
  if normalize and not elect:
    scaling = lam / len(paths)
  merge = "disjoint_mean" if (normalize and elect) else "sum"
  sign = "mass" if elect else None
  opts: dict[str, Any] = {"scaling": scaling}
  density = float(_same("density", per["density"], mk)) if "density" in per else 1.0
  if method == "ties":
    opts.update(density=density, trim_scope="tensor", topk_rule="mergekit", sign=sign,
                merge=merge)
  elif method == "dare":
    opts.update(drop_rate=1.0 - density, rescale="mergekit" if rescale else None, sign=sign,
                merge="mean" if merge == "disjoint_mean" else "sum")
  elif method == "della":
    opts.update(density=density, epsilon=float(_same("epsilon", per["epsilon"], mk)),
                rescale="mergekit" if rescale else None, sign=sign,
                merge="mean" if merge == "disjoint_mean" else "sum")
  elif method == "breadcrumbs":
    opts.update(density=density, gamma=float(_same("gamma", per["gamma"], mk)), scope="tensor",
                sign=sign, merge="mean" if merge == "disjoint_mean" else "sum")
  return {"method": method, "pretrained": pretrained, "finetuned": paths, "options": opts,
          "notes": notes, "mergekit": dict(recipe)}


def run_merge(method: str, pretrained: str, finetuned: Sequence[str], output: str, *,
              options: Mapping[str, Any], report_path: str = "", exclude: Any = None,
              streaming: bool | str = "auto", seed: int = 0, progress: bool = True,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Runs the merge and writes ``output`` plus the JSON report; returns the report."""
  from jaxmtl.merging.out_of_core import merge_checkpoints  # pylint: disable=g-import-not-at-top
  opts = {k: (None if isinstance(v, str) and v.lower() in ("none", "null") else v)
          for k, v in options.items()}
  if method in ("dare", "della"):
    import jax  # pylint: disable=g-import-not-at-top
    opts["key"] = jax.random.key(seed)
  report = merge_checkpoints(pretrained, list(finetuned), output, method=method,
                             exclude=exclude or None, streaming=streaming, progress=progress,
                             **opts)
  report.update({"pretrained": str(pretrained), "finetuned": [str(f) for f in finetuned],
                 "output": str(output), **(extra or {})})
  if method in ("dare", "della"):
    report["options"]["seed"] = seed
  path = report_path or f"{output}.report.json"
  with open(path, "w") as f:
    json.dump(report, f, indent=1, default=str)
  return report


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point (``jaxmtl-merge``); ``argv`` defaults to ``sys.argv``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from jaxmtl.cli import common  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "jaxmtl merge config (configs/merge.py[:m])",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("mergekit", None, "mergekit-style YAML recipe", flag_values=fv)
  flags.DEFINE_string("output", None, "output checkpoint (with --mergekit)", flag_values=fv)
  flags.DEFINE_string("report", "", "JSON report path (with --mergekit)", flag_values=fv)
  flags.DEFINE_bool("progress", True, "progress bar over leaves (with --mergekit)",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed for dare/della (with --mergekit)", flag_values=fv)
  flags.DEFINE_string("compilation_cache", None,
                      "persistent XLA compilation cache directory: repeated in-memory merges of "
                      "the same shapes skip compilation (default $JAX_COMPILATION_CACHE_DIR when "
                      "set, else $XDG_CACHE_HOME/jaxmtl/xla or ~/.cache/jaxmtl/xla; '' turns it "
                      "off)", flag_values=fv)
  fv(argv)
  cache = common.default_cache_dir() if fv.compilation_cache is None else fv.compilation_cache
  if cache:   # every program: the merge kernels compile in 0.05-0.7 s each (jax's default
    common.enable_compilation_cache(cache)   # minimum, 1 s, would keep none of them)
  if (fv.config is None) == (fv.mergekit is None):
    raise ValueError("pass exactly one of --config=configs/merge.py[:method] and "
                     "--mergekit=recipe.yaml")
  if fv.mergekit is not None:
    import yaml  # pylint: disable=g-import-not-at-top
    if not fv.output:
      raise ValueError("--mergekit needs --output=<merged *.safetensors / *.npz / orbax dir>")
    with open(fv.mergekit) as f:
      recipe = yaml.safe_load(f)
    spec = from_mergekit(recipe, os.path.dirname(os.path.abspath(fv.mergekit)))
    report = run_merge(spec["method"], spec["pretrained"], spec["finetuned"], fv.output,
                       options=spec["options"], report_path=fv.report, seed=fv.seed,
                       progress=fv.progress,
                       extra={"notes": spec["notes"], "mergekit": spec["mergekit"]})
  else:
    c = fv.config
    missing = [k for k in ("pretrained", "finetuned", "output") if not c[k]]
    if missing:
      raise ValueError(f"config fields {missing} are empty; set --config.{missing[0]}=...")
    streaming = {"auto": "auto", "true": True, "false": False}.get(str(c.streaming).lower())
    if streaming is None:
      raise ValueError(f"config.streaming={c.streaming!r}; valid: 'auto', 'true', 'false'")
    report = run_merge(c.method, c.pretrained, [p for p in c.finetuned.split(",") if p],
                       c.output, options=c.options.to_dict(), report_path=c.report,
                       exclude=[e for e in c.exclude.split(",") if e], streaming=streaming,
                       seed=c.seed, progress=c.progress, extra={"config": c.to_dict()})
  print(json.dumps({"output": report["output"], "method": report["method"],
                    "nonzero_fraction": report["nonzero_fraction"],
                    "seconds": round(report["timings"]["total"], 3)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
