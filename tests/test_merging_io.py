"""Tests for jaxmtl.merging.io: formats, lazy reads/writes, NaN checks, HF converters."""
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file, load_file

from jaxmtl.merging import io


def _tree(seed=0):
  r = np.random.default_rng(seed)
  return {"enc": {"0": {"kernel": r.normal(size=(4, 3)).astype(np.float32),
                        "bias": r.normal(size=(3,)).astype(np.float32)}},
          "head": {"w": r.normal(size=(3, 2)).astype(np.float64)},
          "step": np.array(7, np.int32)}


def _assert_tree_equal(a, b):
  fa, fb = io.flatten(a), io.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
    assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
    assert np.shape(fa[k]) == np.shape(fb[k]), k


def test_flatten_unflatten_roundtrip_and_errors():
  t = _tree()
  flat = io.flatten(t)
  assert set(flat) == {"enc/0/kernel", "enc/0/bias", "head/w", "step"}
  _assert_tree_equal(io.unflatten(flat), t)
  assert io.flatten({"a": [np.zeros(1), np.ones(1)]}, ".").keys() == {"a.0", "a.1"}
  with pytest.raises(ValueError, match="contains the separator"):
    io.flatten({"a/b": np.zeros(1)})
  with pytest.raises(ValueError, match="both a leaf and a prefix"):
    io.unflatten({"a": 1, "a/b": 2})


@pytest.mark.parametrize("name", ["ck.safetensors", "ck.npz", "ck_orbax"])
def test_save_load_roundtrip(tmp_path, name):
  t = _tree()
  io.save(tmp_path / name, t)
  _assert_tree_equal(io.load(tmp_path / name), t)
  with io.open_leaves(tmp_path / name) as r:
    assert sorted(r.keys()) == sorted(io.flatten(t))
    for k, v in io.flatten(t).items():
      assert r.spec(k) == (v.shape, v.dtype)
      np.testing.assert_array_equal(r.read(k), v)
    with pytest.raises(ValueError, match="not in"):
      r.spec("nope")


def test_orbax_restore_sharded_target(tmp_path):
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  t = {"w": np.arange(32, dtype=np.float32).reshape(8, 4), "b": np.ones(4, np.float32)}
  io.save(tmp_path / "ck", t)
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  target = {"w": jax.ShapeDtypeStruct((8, 4), np.float32, sharding=NamedSharding(mesh, P("fsdp"))),
            "b": jax.ShapeDtypeStruct((4,), np.float32, sharding=NamedSharding(mesh, P()))}
  out = io.load(tmp_path / "ck", target=target)
  assert out["w"].sharding == target["w"].sharding
  assert len(out["w"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(out["w"]), t["w"])


@pytest.mark.parametrize("name", ["bad.safetensors", "bad.npz", "bad_orbax"])
def test_nan_inf_raise_naming_leaf(tmp_path, name):
  t = _tree()
  t["enc"]["0"]["bias"][1] = np.nan
  t["head"]["w"][0, 0] = np.inf
  io.save(tmp_path / name, t)
  with pytest.raises(ValueError, match=r"enc/0/bias.*head/w|head/w.*enc/0/bias"):
    io.load(tmp_path / name)
  with io.open_leaves(tmp_path / name) as r:
    for _ in range(2):   # a leaf found finite is not checked again; a bad one raises each time
      np.testing.assert_array_equal(r.read("enc/0/kernel"), t["enc"]["0"]["kernel"])
      with pytest.raises(ValueError, match="enc/0/bias"):
        r.read("enc/0/bias")


def test_bf16_nan_detected(tmp_path):
  save_file({"a": np.array([1, np.nan], ml_dtypes.bfloat16)}, str(tmp_path / "x.safetensors"))
  with pytest.raises(ValueError, match="'a'"):
    io.load(tmp_path / "x.safetensors")


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_leaf_writer_streams(tmp_path, ext):
  flat = io.flatten(_tree(1))
  bf = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
  if ext == "npz":
    with pytest.raises(ValueError, match="npz cannot store"):
      io.LeafWriter(tmp_path / "bf.npz", {"bf": (bf.shape, bf.dtype)})
  else:
    flat["bf"] = bf
  specs = {k: (v.shape, v.dtype) for k, v in flat.items()}
  path = tmp_path / f"out.{ext}"
  meta = {"metadata": {"m": "1"}} if ext == "safetensors" else {}
  with io.LeafWriter(path, specs, **meta) as w:
    for k in specs:
      w.write(k, flat[k])
  _assert_tree_equal(io.load(path), io.unflatten(flat))
  if ext == "safetensors":  # readable by the reference library itself
    ref = load_file(str(path))
    np.testing.assert_array_equal(ref["enc/0/kernel"], flat["enc/0/kernel"])
  w = io.LeafWriter(tmp_path / f"o2.{ext}", specs)
  with pytest.raises(ValueError, match="declared shape"):
    w.write(list(specs)[0], np.zeros((9,), np.float32))
  with pytest.raises(ValueError, match="were not written"):
    w.close()


def test_detect_format_error():
  with pytest.raises(ValueError, match="safetensors"):
    io.detect_format("model.bin")


def _clip_hf(rng, layers=2, d=8, mlp=16, patch=4, ch=3, npos=5, proj=6):
  V, f = "vision_model.", lambda *s: rng.normal(size=s).astype(np.float32)
  sd = {V + "embeddings.patch_embedding.weight": f(d, ch, patch, patch),
        V + "embeddings.class_embedding": f(d),
        V + "embeddings.position_embedding.weight": f(npos, d),
        V + "embeddings.position_ids": np.arange(npos, dtype=np.int64)[None],
        V + "pre_layrnorm.weight": f(d), V + "pre_layrnorm.bias": f(d),
        V + "post_layernorm.weight": f(d), V + "post_layernorm.bias": f(d),
        "visual_projection.weight": f(proj, d)}
  for i in range(layers):
    L = f"{V}encoder.layers.{i}."
    for p in "qkv":
      sd[L + f"self_attn.{p}_proj.weight"], sd[L + f"self_attn.{p}_proj.bias"] = f(d, d), f(d)
    sd[L + "self_attn.out_proj.weight"], sd[L + "self_attn.out_proj.bias"] = f(d, d), f(d)
    for n in (1, 2):
      sd[L + f"layer_norm{n}.weight"], sd[L + f"layer_norm{n}.bias"] = f(d), f(d)
    sd[L + "mlp.fc1.weight"], sd[L + "mlp.fc1.bias"] = f(mlp, d), f(mlp)
    sd[L + "mlp.fc2.weight"], sd[L + "mlp.fc2.bias"] = f(d, mlp), f(d)
  return sd


def _gpt2_hf(rng, layers=2, d=8, vocab=11, npos=7):
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  sd = {"transformer.wte.weight": f(vocab, d), "transformer.wpe.weight": f(npos, d),
        "transformer.ln_f.weight": f(d), "transformer.ln_f.bias": f(d)}
  for i in range(layers):
    H = f"transformer.h.{i}."
    sd[H + "attn.c_attn.weight"], sd[H + "attn.c_attn.bias"] = f(d, 3 * d), f(3 * d)
    sd[H + "attn.c_proj.weight"], sd[H + "attn.c_proj.bias"] = f(d, d), f(d)
    sd[H + "attn.bias"] = np.tril(np.ones((1, 1, npos, npos), np.float32))  # causal-mask buffer
    sd[H + "mlp.c_fc.weight"], sd[H + "mlp.c_fc.bias"] = f(d, 4 * d), f(4 * d)
    sd[H + "mlp.c_proj.weight"], sd[H + "mlp.c_proj.bias"] = f(4 * d, d), f(d)
    for n in (1, 2):
      sd[H + f"ln_{n}.weight"], sd[H + f"ln_{n}.bias"] = f(d), f(d)
  return sd


def test_clip_vision_convert_and_export(tmp_path):
  sd = _clip_hf(np.random.default_rng(0))
  save_file(sd, str(tmp_path / "clip.safetensors"))
  hf = io.load(tmp_path / "clip.safetensors", nested=False, sep=".")
  hf = {k.replace("/", "."): v for k, v in hf.items()}
  t = io.from_hf(hf, io.CLIP_VISION_RULES)
  V = "vision_model."
  q = t["blocks"]["1"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(q, sd[V + "encoder.layers.1.self_attn.q_proj.weight"].T)
  assert t["blocks"]["0"]["mlp"]["fc1"]["kernel"].shape == (8, 16)  # [in, out]
  assert t["embed"]["patch"]["kernel"].shape == (4, 4, 3, 8)  # [kh, kw, in, out]
  assert t["proj"]["kernel"].shape == (8, 6)
  np.testing.assert_array_equal(t["blocks"]["0"]["norm2"]["scale"],
                                sd[V + "encoder.layers.0.layer_norm2.weight"])
  back = io.to_hf(t, io.CLIP_VISION_RULES)
  assert set(back) == set(sd) - {V + "embeddings.position_ids"}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_gpt2_convert_split_qkv_and_export():
  rng = np.random.default_rng(1)
  sd = _gpt2_hf(rng)
  t = io.from_hf(sd, io.GPT2_RULES)
  w = sd["transformer.h.0.attn.c_attn.weight"]
  att = t["blocks"]["0"]["attn"]
  np.testing.assert_array_equal(att["query"]["kernel"], w[:, :8])
  np.testing.assert_array_equal(att["key"]["kernel"], w[:, 8:16])
  np.testing.assert_array_equal(att["value"]["bias"], sd["transformer.h.0.attn.c_attn.bias"][16:])
  # Conv1D is [in, out] already: no transpose.
  np.testing.assert_array_equal(t["blocks"]["1"]["mlp"]["fc1"]["kernel"],
                                sd["transformer.h.1.mlp.c_fc.weight"])
  assert t["embed"]["embedding"].shape == (11, 8)
  back = io.to_hf(t, io.GPT2_RULES, prefix="transformer.")
  assert set(back) == {k for k in sd if not k.endswith(".attn.bias")}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_converter_errors():
  sd = _gpt2_hf(np.random.default_rng(2), layers=1)
  sd["transformer.h.0.extra.weight"] = np.zeros(2, np.float32)
  with pytest.raises(ValueError, match="extra.weight"):
    io.from_hf(sd, io.GPT2_RULES)
  assert "extra" not in io.from_hf(sd, io.GPT2_RULES, strict=False)["blocks"]["0"]
  del sd["transformer.h.0.extra.weight"]
  sd["transformer.h.0.mlp.c_fc.bias"][3] = np.nan
  with pytest.raises(ValueError, match="h.0.mlp.c_fc.bias"):
    io.from_hf(sd, io.GPT2_RULES)
  with pytest.raises(ValueError, match="no conversion rule"):
    io.to_hf({"blocks": {"0": {"weird": np.zeros(1)}}}, io.GPT2_RULES)


def test_retargeted_table():
  rules = (io.Rule("h.{i}.mlp.c_fc.weight", "layers_{i}/Dense_0/kernel"),)
  sd = {"h.3.mlp.c_fc.weight": np.ones((2, 5), np.float32)}
  assert io.from_hf(sd, rules)["layers_3"]["Dense_0"]["kernel"].shape == (2, 5)
