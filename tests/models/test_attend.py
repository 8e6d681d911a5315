"""The Attend model equals a PyTorch model of the reference architecture on the same weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from attend_jax.convert import reference_checkpoint
from attend_jax.models import attend, roi, vit
from torch_reference import ReferenceAttend, randomize_
from torch_refs import hf_dinov2

WIDTH, DEPTH, HEADS, SIZE = 64, 2, 4, 56


def _pair(pool, seed=0):
  torch.manual_seed(seed)
  vision = hf_dinov2(width=WIDTH, depth=DEPTH, heads=HEADS, image_size=SIZE, seed=seed)
  ref = randomize_(ReferenceAttend(vision, WIDTH, pool=pool), seed).eval()
  cfg = attend.AttendConfig(
      vit=vit.config_for("vits14", width=WIDTH, depth=DEPTH, num_heads=HEADS, pretrained_grid=4,
                         pos_embed_interp="hf_v1"),
      pool=pool, roi_size=SIZE)
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  return ref, reference_checkpoint.load_reference(sd, cfg)


# Jitted, one compile each: op by op, a call of the model took 10-30 s on 2 cores.
_call = nnx.jit(lambda model, *args: model(*args))


def _inputs(b=2, k=5, seed=0):
  rng = np.random.default_rng(seed)
  crops = rng.normal(size=(b, k, SIZE, SIZE, 3)).astype(np.float32)
  positions = rng.uniform(0, 1, size=(b, k, 4)).astype(np.float32)
  return crops, positions


@pytest.mark.parametrize("pool", attend.POOLS)
def test_logits_and_roi_embeddings_match_reference(pool):
  ref, ours = _pair(pool)
  crops, positions = _inputs()
  with torch.no_grad():
    ref_logits, ref_rois = ref(torch.from_numpy(crops).permute(0, 1, 4, 2, 3),
                               torch.from_numpy(positions))
  logits, aux = jax.jit(lambda m, c, p: m(c, p))(ours, crops, positions)
  assert logits.shape == (2,)
  np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(aux["roi_embeddings"], ref_rois.numpy(), atol=1e-4, rtol=0)
  assert len(aux["attention"]) == 3
  np.testing.assert_allclose(np.asarray(aux["attention"][2]).sum(-1), 1.0, atol=1e-5)


def test_from_images_crops_on_device_like_the_reference():
  ref, ours = _pair("anchor", seed=1)
  rng = np.random.default_rng(3)
  image = (rng.random((90, 70)) * 65535).astype(np.uint16)
  boxes = np.array([[35, 45, 70, 90], [20, 30, 16, 20], [60, 80, 30, 30]], np.float32)
  padded = np.zeros((1, 112, 112), np.float32)
  padded[0, :90, :70] = image / 65535.0
  logits, _ = nnx.jit(lambda m, *a: m.from_images(*a))(
      ours, jnp.asarray(padded), jnp.array([[90, 70]]), jnp.asarray(boxes[None]))

  # The reference's host pipeline, step by step.
  from test_roi import _reference_crop
  crops = np.stack([_reference_crop(image, b, SIZE) for b in boxes])
  mean, std = np.array(roi.IMAGENET_MEAN), np.array(roi.IMAGENET_STD)
  crops = ((crops[..., None] - mean) / std).astype(np.float32)
  positions = np.stack([[cx / 70, cy / 90, max(w, h) / 70, max(w, h) / 90]
                        for cx, cy, w, h in boxes]).astype(np.float32)
  with torch.no_grad():
    ref_logits, _ = ref(torch.from_numpy(crops[None]).permute(0, 1, 4, 2, 3),
                        torch.from_numpy(positions[None]))
  np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)


def test_train_mode_uses_batch_statistics_and_dropout():
  _, model = _pair("anchor")
  crops, positions = _inputs(b=4)
  eval_logits, _ = _call(model, crops, positions)
  np.testing.assert_array_equal(_call(model, crops, positions)[0], eval_logits)  # Deterministic.
  stats_before = np.asarray(model.bn_vision.mean[...]).copy()
  model.train()
  a, _ = _call(model, crops, positions)
  b, _ = _call(model, crops, positions)
  assert not np.allclose(a, b)  # Dropout draws differ.
  assert not np.allclose(np.asarray(model.bn_vision.mean[...]), stats_before)  # Running stats.
  model.eval()


def test_two_class_head_and_bad_config():
  cfg = attend.AttendConfig(vit=vit.ViTConfig(width=32, depth=1, num_heads=2, pretrained_grid=2),
                            num_classes=2, roi_size=28)
  model = reference_checkpoint.create(cfg)
  model.eval()
  rng = np.random.default_rng(0)
  crops = rng.normal(size=(2, 3, 28, 28, 3)).astype(np.float32)
  logits, aux = _call(model, crops, rng.uniform(size=(2, 3, 4)).astype(np.float32))
  assert logits.shape == (2, 2) and aux["roi_embeddings"].shape == (2, 3, 32 + 256)
  for bad, message in ((dict(pool="max"), "pool must be one of"),
                       (dict(num_classes=3), "num_classes must be 1"),
                       (dict(pool_attn_block=4), "pool_attn_block 4")):
    with pytest.raises(ValueError, match=message):
      reference_checkpoint.create(dataclasses.replace(cfg, **bad))


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
  ref, ours = _pair("anchor")
  crops, positions = _inputs()
  f32, _ = _call(ours, crops, positions)
  cfg = dataclasses.replace(ours.cfg, vit=dataclasses.replace(ours.cfg.vit, dtype=jnp.bfloat16))
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  bf16_model = reference_checkpoint.load_reference(sd, cfg)
  bf16, aux = _call(bf16_model, crops, positions)
  assert aux["roi_features"].dtype == jnp.float32  # The aggregator and head stay float32.
  np.testing.assert_allclose(bf16, f32, atol=0.1)


@pytest.mark.slow
def test_convert_reference_cli_output_loads_for_predict(tmp_path):
  import helpers
  from attend_jax import run

  ref, _ = _pair("attn", seed=2)
  torch.save(ref.state_dict(), tmp_path / "model_epoch_7.pt")
  proc = helpers.run(
      "tools/convert_reference.py", f"--checkpoint={tmp_path / 'model_epoch_7.pt'}",
      f"--out={tmp_path / 'out'}", "--config.model.pool=attn", f"--config.model.roi_size={SIZE}",
      f"--config.model.vit_overrides.width={WIDTH}", f"--config.model.vit_overrides.depth={DEPTH}",
      f"--config.model.vit_overrides.num_heads={HEADS}",
      "--config.model.vit_overrides.pretrained_grid=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = run.load(tmp_path / "out")
  assert loaded.source.endswith("step 0")
  crops, positions = _inputs(seed=4)
  with torch.no_grad():
    ref_logits, _ = ref(torch.from_numpy(crops).permute(0, 1, 4, 2, 3), torch.from_numpy(positions))
  logits, _ = _call(loaded.model, jnp.asarray(crops), jnp.asarray(positions))
  np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)

  # A state dict of another architecture is refused with the file named.
  torch.save({"fc1.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
  proc = helpers.run("tools/convert_reference.py", f"--checkpoint={tmp_path / 'other.pt'}",
                     f"--out={tmp_path / 'o2'}")
  assert proc.returncode == 1 and "other.pt" in proc.stderr and "Traceback" not in proc.stderr
