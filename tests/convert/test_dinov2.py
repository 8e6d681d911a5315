"""Weights conversion: every source format, the orbax round trip, downloads and bad files."""

import pathlib
import urllib.error

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from attend_jax import errors
from attend_jax.convert import dinov2 as conv
from attend_jax.convert.dinov2 import download
from attend_jax.models import pretrained, vit
from torch_refs import hf_dinov2, meta_state_from_hf, run_hf, timm_state_from_meta
import helpers

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(width=64, depth=2, num_heads=4)


def _hf(registers=False, swiglu=False, seed=0):
  return hf_dinov2(width=64, depth=2, heads=4, registers=registers, swiglu=swiglu,
                   image_size=56, seed=seed)


def _images(seed=0):
  return np.random.default_rng(seed).normal(size=(2, 56, 70, 3)).astype(np.float32)


def _assert_same_outputs(hf_model, model, registers):
  ref = run_hf(hf_model, _images())
  cls, aux = model(_images())
  np.testing.assert_allclose(cls, ref[:, 0], atol=1e-4, rtol=0)
  np.testing.assert_allclose(aux["patch_tokens"], ref[:, 5 if registers else 1:], atol=1e-4,
                             rtol=0)


def _variant(swiglu):
  return "vitg14" if swiglu else "vits14"


# Non-square 56x70 inputs resize positions with the size-based algorithms, which is what
# transformers does for both of its models.
_HF_INTERP = {False: "hf_v1", True: "antialias"}


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg4"])
@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_huggingface_in_memory_and_legacy_on_disk_names(tmp_path, registers, swiglu):
  hf_model = _hf(registers, swiglu)
  in_memory = tmp_path / "in_memory.safetensors"
  save_file(hf_model.state_dict(), in_memory)
  hf_model.save_pretrained(tmp_path / "legacy")  # transformers writes the legacy names.
  legacy = tmp_path / "legacy" / "model.safetensors"
  for path, fmt in ((in_memory, "hf"), (legacy, "hf_legacy")):
    loaded = conv.load_pretrained(path, _variant(swiglu), registers, **TINY)
    assert loaded.source_format == fmt
    assert loaded.model.cfg.pos_embed_interp == _HF_INTERP[registers]
    _assert_same_outputs(hf_model, loaded.model, registers)


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg4"])
def test_meta_hub_pth(tmp_path, registers):
  hf_model = _hf(registers)
  path = tmp_path / "dinov2_vits14_pretrain.pth"
  torch.save(meta_state_from_hf(hf_model), path)
  loaded = conv.load_pretrained(path, "vits14", registers, **TINY)
  assert loaded.source_format == "meta"
  assert loaded.model.cfg.pos_embed_interp == ("antialias" if registers else "meta_v1")
  override = conv.load_pretrained(path, "vits14", registers, _HF_INTERP[registers], **TINY)
  _assert_same_outputs(hf_model, override.model, registers)


@pytest.mark.parametrize("registers,swiglu", [(False, False), (True, False), (False, True)])
def test_timm_names(tmp_path, registers, swiglu):
  hf_model = _hf(registers, swiglu)
  path = tmp_path / "timm.pth"
  torch.save({"state_dict": timm_state_from_meta(meta_state_from_hf(hf_model))}, path)
  loaded = conv.load_pretrained(path, _variant(swiglu), registers, _HF_INTERP[registers],
                                **TINY)
  assert loaded.source_format == "timm"
  _assert_same_outputs(hf_model, loaded.model, registers)


def test_safetensors_need_no_torch(tmp_path):
  path = tmp_path / "model.safetensors"
  save_file(_hf().state_dict(), path)
  code = (
      "import sys; sys.modules['torch'] = None\n"
      "from attend_jax.convert import dinov2 as conv\n"
      f"m = conv.load_pretrained({str(path)!r}, 'vits14', width=64, depth=2, num_heads=4)\n"
      "assert 'torch' not in {k for k, v in sys.modules.items() if v is not None}\n"
      "print(m.source_format)\n"
  )
  out = helpers.run("-c", code)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "hf"


def test_convert_save_load_round_trip(tmp_path):
  path = tmp_path / "w.pth"
  torch.save(meta_state_from_hf(_hf(registers=True)), path)
  loaded = conv.load_pretrained(path, "vits14", True, **TINY)
  pretrained.save(loaded.model, tmp_path / "ckpt")
  fresh = pretrained.load(tmp_path / "ckpt")
  assert fresh.cfg == loaded.model.cfg
  for a, b in zip(jax.tree.leaves(fresh(_images())), jax.tree.leaves(loaded.model(_images()))):
    np.testing.assert_array_equal(a, b)


def _meta_file(tmp_path, name="w.pth", **kw):
  path = tmp_path / name
  torch.save(meta_state_from_hf(_hf(**kw)), path)
  return path


def test_missing_keys_are_named(tmp_path):
  sd = meta_state_from_hf(_hf())
  del sd["blocks.1.attn.proj.weight"], sd["norm.bias"]
  path = tmp_path / "partial.pth"
  torch.save(sd, path)
  with pytest.raises(errors.CheckpointError) as e:
    conv.load_pretrained(path, "vits14", **TINY)
  assert str(path) in str(e.value)
  assert "missing 2 keys" in str(e.value)
  assert "blocks.1.attn.proj.weight" in str(e.value) and "norm.bias" in str(e.value)


def test_wrong_variant_names_shapes(tmp_path):
  # A ViT-B/14-wide file (one block keeps it small) given to a ViT-S/14.
  hf_model = hf_dinov2(width=768, depth=1, heads=12, image_size=56)
  path = tmp_path / "vitb.pth"
  torch.save(meta_state_from_hf(hf_model), path)
  with pytest.raises(errors.CheckpointError, match="shapes do not match") as e:
    conv.load_pretrained(path, "vits14", depth=1)
  assert str(path) in str(e.value)
  assert "(1, 1, 768) vs model (1, 1, 384)" in str(e.value)


def test_register_mismatch_says_what_to_do(tmp_path):
  path = _meta_file(tmp_path, registers=True)
  with pytest.raises(errors.CheckpointError, match="add --registers"):
    conv.load_pretrained(path, "vits14", False, **TINY)


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_truncated_file(tmp_path, kind):
  path = tmp_path / f"w.{kind}"
  if kind == "pth":
    torch.save(meta_state_from_hf(_hf()), path)
  else:
    save_file(_hf().state_dict(), path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(errors.CheckpointError, match="truncated or corrupt") as e:
    conv.load_pretrained(path, "vits14", **TINY)
  assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "content,reason",
    [(b"<html>404 Not Found</html>", "is not a checkpoint"), (b"", "is empty"),
     (None, "no such file")])
def test_non_checkpoint_files(tmp_path, content, reason):
  path = tmp_path / "weights.pth"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(errors.CheckpointError, match=reason) as e:
    conv.load_pretrained(path, "vits14", **TINY)
  assert str(path) in str(e.value)


def test_pickle_of_something_else(tmp_path):
  path = tmp_path / "list.pth"
  torch.save([1, 2, 3], path)
  with pytest.raises(errors.CheckpointError, match="holds a list"):
    conv.load_pretrained(path, "vits14", **TINY)
  path = tmp_path / "other.pth"
  torch.save({"fc.weight": torch.zeros(3, 3)}, path)
  with pytest.raises(errors.CheckpointError, match="no DINOv2 weights found"):
    conv.load_pretrained(path, "vits14", **TINY)


def test_default_source_downloads_meta_file_into_cache(tmp_path, monkeypatch):
  served = tmp_path / "server" / "dinov2_vits14" / "dinov2_vits14_pretrain.pth"
  served.parent.mkdir(parents=True)
  torch.save(meta_state_from_hf(_hf()), served)
  monkeypatch.setenv("ATTEND_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(download, "META_URL",
                      (tmp_path / "server").as_uri() + "/dinov2_{v}/dinov2_{v}{reg}_pretrain.pth")
  seen = []
  source = conv.resolve_source(None, "vits14", False, progress=lambda d, t: seen.append(d))
  assert source == tmp_path / "cache" / "dinov2" / "dinov2_vits14_pretrain.pth"
  assert source.read_bytes() == served.read_bytes()
  assert seen and seen[-1] == served.stat().st_size
  served.unlink()  # The second call must use the cache.
  assert conv.resolve_source(None, "vits14", False) == source


def test_offline_download_says_which_url_and_where(tmp_path, monkeypatch):
  monkeypatch.setenv("ATTEND_JAX_CACHE", str(tmp_path / "cache"))

  def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

  monkeypatch.setattr(download.urllib.request, "urlopen", offline)
  with pytest.raises(errors.WeightsDownloadError) as e:
    conv.resolve_source(None, "vitb14", True)
  message = str(e.value)
  assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in message
  assert str(tmp_path / "cache" / "dinov2" / "dinov2_vitb14_reg4_pretrain.pth") in message
  assert not list((tmp_path / "cache" / "dinov2").glob("*.part"))


def _cli(*args):
  return helpers.run("tools/convert_dinov2.py", *args)


@pytest.mark.slow
def test_cli_converts_and_reports_bad_files(tmp_path):
  hf_model = hf_dinov2(width=384, depth=12, heads=6, image_size=56)
  path = tmp_path / "dinov2_vits14_pretrain.pth"
  torch.save(meta_state_from_hf(hf_model), path)
  out = _cli("--variant", "vits14", "--checkpoint", str(path), "--out", str(tmp_path / "ckpt"),
             "--pos_embed_interp", "hf_v1")
  assert out.returncode == 0, out.stderr
  assert "meta names" in out.stdout and "position resize hf_v1" in out.stdout
  model = pretrained.load(tmp_path / "ckpt")
  _assert_same_outputs(hf_model, model, registers=False)

  # A register model of a smaller size than its variant's, as the configs' :tiny variants use
  # (docs/backbone.md's --variant vitb14 --registers, from a local file instead of the hub).
  hf_model = hf_dinov2(width=64, depth=2, heads=2, registers=True, image_size=56)
  torch.save(meta_state_from_hf(hf_model), tmp_path / "reg4.pth")
  out = _cli("--variant", "vitb14", "--registers", "--width", "64", "--depth", "2",
             "--num_heads", "2", "--checkpoint", str(tmp_path / "reg4.pth"),
             "--out", str(tmp_path / "reg4"))
  assert out.returncode == 0, out.stderr
  _assert_same_outputs(hf_model, pretrained.load(tmp_path / "reg4"), registers=True)

  bad = tmp_path / "bad.pth"
  bad.write_text("not weights")
  out = _cli("--variant", "vits14", "--checkpoint", str(bad), "--out", str(tmp_path / "x"))
  assert out.returncode == 1
  assert f"error: {bad}: is not a checkpoint" in out.stderr
  assert "Traceback" not in out.stderr


def test_random_weights_are_a_timm_file_that_converts_tensor_for_tensor(tmp_path):
  """``write_random``: the stand-in for a pretrained file when nothing may be downloaded."""
  from safetensors.numpy import load_file

  cfg = vit.config_for("vits14", width=64, depth=2, num_heads=2)
  conv.write_random(tmp_path / "w.safetensors", cfg, seed=1)
  raw = load_file(tmp_path / "w.safetensors")
  assert "mask_token" not in raw and "blocks.1.attn.qkv.weight" in raw  # timm's names.
  assert raw["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64) and raw["norm.weight"].min() == 1
  model = conv.load_pretrained(tmp_path / "w.safetensors", "vits14", width=64, depth=2,
                               num_heads=2).model
  np.testing.assert_array_equal(np.asarray(model.blocks[1].attn.qkv.kernel[...]),
                                raw["blocks.1.attn.qkv.weight"].T)
  with pytest.raises(ValueError, match="without registers"):
    conv.write_random(tmp_path / "r.safetensors", vit.config_for("vits14", registers=True))
