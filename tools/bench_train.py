r"""Times one training step of the Attend model: ours in JAX against the reference's in PyTorch.

JAX runs the trainer's own step (``trainer.make_train_step``): RoI crops cut on device from
the breast image, the DINOv2 ViT on every RoI, the aggregator and head, BCE (pos_weight 10)
+ 0.3 x repulsive, AdamW with the patch embedding and first 3 blocks frozen. PyTorch runs the
same model written from docs/method.md (``tools/torch_reference.py``, transformers' Dinov2Model)
on the same loss and optimiser, in float32 as the reference trains, and again under
autocast. Torch gets its crops ready-made (the reference cuts them in its data loader), so
JAX does strictly more work per step. Repetitions alternate between frameworks, so
background load hits all alike. It also prints the token-reduction figures: the tokens and
ViT FLOPs of one whole mammogram at patch 14 against K RoIs.

  .venv/bin/python tools/bench_train.py                 # CPU: a tiny ViT, a few seconds
  python tools/bench_train.py --preset=gpu              # ViT-B/14, 448 px, K=5, batch 32, bf16
  .venv/bin/python tools/bench_train.py --preset=gpu --dry_run   # its code path, tiny, on CPU

``--dry_run`` keeps the preset (its dtype, loss, optimiser, both frameworks) but shrinks the
shapes and runs one step of each, so a device session never finds a broken benchmark.
``--json=PATH`` also writes the figures (tools/bench_accelerator.sh collects them).

It then times input overlap (``--overlap_steps``, 0 skips it): the trainer's step fed by a
loader that takes as long as the step (a sleep, as a disk or a bucket would), first as the old
loop ran it (load, place on the device, step, read the loss back), then as the trainer runs it
now (``data.prefetch.DevicePrefetch`` placing batches ahead in a thread, nothing read back
between log steps). Overlapped, a step takes max(step, load), not their sum. Last, evaluation's
images/s against training's (the evaluation step against the update, each dispatched back to
back and read once at the end, as both loops run them).

``--preset=gpu`` reports MFU against --peak_tflops; the FLOPs are the ViT's matmuls and
attention (3x the forward for a train step), counting frozen blocks as if trained.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from flax import nnx

from attend_jax import tasks
from attend_jax.models import attend, vit
from attend_jax.data import prefetch
from attend_jax.train import optim, prediction, trainer
from bench_util import forward_flops, interleaved, peak_device_bytes
from configs import common
from torch_reference import ReferenceAttend

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "gpu"], "cpu: tiny shapes; gpu: the paper's shapes.")
flags.DEFINE_integer("batch", None, "Images per step (default 4 on cpu, 32 on gpu).")
flags.DEFINE_integer("reps", 5, "Timed steps per framework, alternating.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compiling.")
flags.DEFINE_float("peak_tflops", 989.0, "Accelerator dense bf16 peak for MFU (H100/H200).")
flags.DEFINE_bool("dry_run", False, "The preset's code path at tiny shapes, one step each.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_integer("overlap_steps", 8, "Steps of the input-overlap comparison (0: skip it).")
flags.DEFINE_list("frameworks", ["jax", "torch"], "jax, torch or both (tools/bench_accelerator.sh"
                  " runs them in separate processes).")

transformers.logging.set_verbosity_error()

PRESETS = {
    # A tiny ViT at 112 px so that a CPU step takes well under a second.
    "cpu": {"variant": "vits14", "roi_size": 112, "image_size": 512, "topk": 5, "batch": 4,
            "dtype": "float32",
            "overrides": {"width": 96, "depth": 4, "num_heads": 3, "pretrained_grid": 8}},
    "gpu": {"variant": "vitb14", "roi_size": 448, "image_size": 3072, "topk": 5, "batch": 32,
            "dtype": "bfloat16", "overrides": {}},
}
# --dry_run: the smallest shapes the model takes (a 2 x 2 patch grid), whatever the preset.
DRY_RUN = {"variant": "vits14", "roi_size": 28, "image_size": 64, "topk": 3, "batch": 2,
           "overrides": {"width": 32, "depth": 1, "num_heads": 2, "pretrained_grid": 2}}
MAMMOGRAM_HW = (3000, 2400)  # A full-field mammogram, as docs/method.md counts it.


def make_config(preset: dict):
  c = common.base()
  c.model.variant = preset["variant"]
  c.model.vit_overrides.update(preset["overrides"])
  c.model.roi_size = preset["roi_size"]
  c.model.dtype = preset["dtype"]
  c.model.freeze_blocks = 3
  c.data.image_size = preset["image_size"]
  c.proposals.source, c.proposals.topk = "files", preset["topk"]
  c.loss.contrastive_weight = 0.0  # The reference's loss: BCE + 0.3 x repulsive.
  c.optim.lr = 1e-6
  return c


def make_batch(config, batch: int, seed: int = 0) -> dict:
  """Random breast images and proposals with the pipeline's shapes and dtypes."""
  rng = np.random.default_rng(seed)
  s, k = config.data.image_size, config.proposals.topk
  hw = np.stack([rng.integers(s // 2, s + 1, batch), rng.integers(s // 3, s // 2, batch)], 1)
  side = rng.uniform(0.1, 0.4, (batch, k, 1)) * hw[:, None, :1]
  centre = rng.uniform(0.3, 0.7, (batch, k, 2)) * hw[:, None, ::-1]
  return {
      "image": rng.integers(0, 65535, (batch, s, s), dtype=np.uint16),
      "image_hw": hw.astype(np.int32),
      "proposals": np.concatenate([centre, side, side, rng.uniform(0, 1, (batch, k, 1))],
                                  -1).astype(np.float32),
      "proposal_mask": np.ones((batch, k), bool),
      "lesion_boxes": np.zeros((batch, 8, 4), np.float32),
      "lesion_mask": np.zeros((batch, 8), bool),
      "lesion_malignant": np.zeros((batch, 8), bool),
      "label": (np.arange(batch) % 2).astype(np.int32),
      "brightness": np.ones(batch, np.float32),
      "contrast": np.ones(batch, np.float32),
  }


def jax_step(config, batch: dict):
  """A callable running the trainer's jitted step on ``batch``, blocking until done, and the
  unblocked step on any placed batch (returning the loss, still on the device)."""
  task = tasks.get(config)
  model = task.build_model(0)
  model_cfg = model.cfg
  model.train()
  train_def, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  tx = optim.make(config, params, model_cfg.vit.depth)
  step_fn = trainer.make_train_step(task, train_def, tx, jax.random.key(1))
  state = {"params": params, "stats": stats, "opt": jax.jit(tx.init)(params)}
  device_batch = jax.device_put(batch)

  def on(placed):
    state["params"], state["stats"], state["opt"], terms = step_fn(
        state["params"], state["stats"], state["opt"], rngs, jnp.int32(0), placed)
    return terms["loss"]

  def run():
    jax.block_until_ready(on(device_batch))

  # Its own copy: the train step donates the state it was split from. Timing needs the shapes,
  # not the trained values.
  twin = task.build_model(0)
  twin.eval()
  evaluate = prediction.model_step(task, twin)

  def eval_on(placed):
    return evaluate(placed)["prob"]

  return run, model_cfg, on, eval_on


def eval_against_train(train_on, eval_on, batch: dict, steps: int) -> dict:
  """Images/s of ``steps`` evaluation steps and of as many train steps, each dispatched back to
  back and read once at the end, as the loops run them."""
  placed = jax.device_put(batch)
  rates = {}
  for name, fn in (("train", train_on), ("eval", eval_on)):
    jax.block_until_ready(fn(placed))  # Compiled.
    start = time.perf_counter()
    out = [fn(placed) for _ in range(steps)]
    jax.block_until_ready(out)
    rates[name] = steps * len(batch["label"]) / (time.perf_counter() - start)
  return {"train_images_per_s": rates["train"], "eval_images_per_s": rates["eval"],
          "eval_over_train": rates["eval"] / rates["train"]}


def input_overlap(step_on, batch: dict, steps: int) -> dict:
  """Seconds per step with a loader as slow as the step: the old loop against prefetching."""
  placed = jax.device_put(batch)
  float(step_on(placed))  # Compiled for this batch's layout.
  start = time.perf_counter()
  float(step_on(placed))
  step_s = time.perf_counter() - start

  def loader():
    for _ in range(steps):
      time.sleep(step_s)  # Reading and decoding, as long as one step.
      yield batch

  start = time.perf_counter()
  for host_batch in loader():  # The old trainer loop: load, place, step, read the loss.
    float(step_on(jax.device_put(host_batch)))
  sequential = (time.perf_counter() - start) / steps
  start = time.perf_counter()
  inputs = prefetch.DevicePrefetch(loader(), jax.device_put, size=2)
  loss = None
  for placed, _ in inputs:  # The trainer now: placed ahead, nothing read back.
    loss = step_on(placed)
  jax.block_until_ready(loss)
  overlapped = (time.perf_counter() - start) / steps
  return {"step_s": step_s, "load_s": step_s, "sequential_s": sequential,
          "prefetched_s": overlapped, "prefetched_over_max": overlapped / step_s,
          "sequential_over_sum": sequential / (2 * step_s)}


def torch_step(model_cfg: attend.AttendConfig, batch: dict, device: str, autocast: bool):
  """The reference's step: forward on host-cut crops, BCE + 0.3 x repulsive, AdamW."""
  v = model_cfg.vit
  hf = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
      intermediate_size=v.mlp_hidden, patch_size=vit.PATCH_SIZE,
      image_size=v.pretrained_grid * vit.PATCH_SIZE, layerscale_value=1.0))
  model = ReferenceAttend(hf, v.width).to(device).train()
  for p in list(hf.embeddings.parameters()) + [
      p for layer in hf.encoder.layer[:3] for p in layer.parameters()]:
    p.requires_grad_(False)
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
  b, k, s = batch["label"].shape[0], batch["proposals"].shape[1], model_cfg.roi_size
  gen = torch.Generator().manual_seed(0)
  crops = torch.randn(b, k, 3, s, s, generator=gen).to(device)
  positions = torch.rand(b, k, 4, generator=gen).to(device)
  labels = torch.from_numpy(batch["label"]).float().to(device)
  pos_weight = torch.tensor(10.0, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  dtype = torch.bfloat16

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
      logits, rois = model(crops, positions)
      cls = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight)
      emb = F.normalize(rois[:, 1:].float(), dim=-1)
      sim = emb @ emb.transpose(1, 2)
      off = sim - torch.diag_embed(torch.diagonal(sim, dim1=1, dim2=2))
      repulsive = (off ** 2).sum((1, 2)) / (emb.shape[1] * (emb.shape[1] - 1))
      loss = cls + 0.3 * repulsive.mean()
    loss.backward()
    opt.step()
    sync()

  return run


def token_reduction(cfg: vit.ViTConfig, roi_size: int, k: int) -> None:
  h, w = (math.ceil(x / vit.PATCH_SIZE) * vit.PATCH_SIZE for x in MAMMOGRAM_HW)
  full_tokens = (h // vit.PATCH_SIZE) * (w // vit.PATCH_SIZE)
  roi_tokens = k * (roi_size // vit.PATCH_SIZE) ** 2
  # forward_flops assumes a square; a whole image of the same token count is close enough
  # for the matmuls and exact for attention, which depends only on the count.
  full_flops = forward_flops(cfg, math.isqrt(full_tokens) * vit.PATCH_SIZE, 1)
  roi_flops = forward_flops(cfg, roi_size, k)
  print(f"token reduction ({MAMMOGRAM_HW[0]} x {MAMMOGRAM_HW[1]} mammogram, patch 14):"
        f" {full_tokens:,} tokens and {full_flops / 1e12:.2f} TFLOP per forward for the whole"
        f" image, against {k} x {roi_size}px RoIs = {roi_tokens:,} tokens and"
        f" {roi_flops / 1e12:.2f} TFLOP: {full_tokens / roi_tokens:.1f}x fewer tokens,"
        f" {full_flops / roi_flops:.1f}x fewer FLOPs.")


def main(argv):
  del argv
  preset = dict(PRESETS[FLAGS.preset])
  if FLAGS.dry_run:
    preset.update(DRY_RUN)
  if FLAGS.batch:
    preset["batch"] = FLAGS.batch
  unknown = set(FLAGS.frameworks) - {"jax", "torch"}
  if unknown or not FLAGS.frameworks:
    raise app.UsageError(f"--frameworks takes jax and/or torch, got {FLAGS.frameworks}")
  reps, warmup = (1, 0) if FLAGS.dry_run else (FLAGS.reps, FLAGS.warmup)
  gpu = jax.default_backend() == "gpu"
  device = "cuda" if gpu else "cpu"
  frameworks = list(FLAGS.frameworks)
  if "torch" in frameworks and gpu and not torch.cuda.is_available():
    print("torch: skipped, this torch has no CUDA (its figures would be CPU ones beside a GPU's)")
    frameworks.remove("torch")
  config = make_config(preset)
  batch = make_batch(config, preset["batch"])
  step, model_cfg, step_on, eval_on = jax_step(config, batch)
  fns = {}
  if "jax" in frameworks:
    fns["jax"] = step
  if "torch" in frameworks:
    fns["torch fp32"] = torch_step(model_cfg, batch, device, autocast=False)
    fns["torch autocast"] = torch_step(model_cfg, batch, device, autocast=True)
  dry = " (dry run)" if FLAGS.dry_run else ""
  print(f"{FLAGS.preset}{dry}: {preset['variant']} {preset['overrides'] or ''} RoIs"
        f" {preset['topk']} x {preset['roi_size']} px, batch {preset['batch']}, JAX"
        f" {preset['dtype']}; jax on {jax.devices()[0].platform}, torch on {device}")
  seconds = interleaved(fns, reps, warmup)
  flops = 3 * forward_flops(model_cfg.vit, preset["roi_size"], preset["batch"] * preset["topk"])
  rows = {}
  for name, sec in seconds.items():
    rows[name] = {"ms_per_step": sec * 1e3, "images_per_s": preset["batch"] / sec,
                  "vit_tflops": flops / sec / 1e12}
    line = (f"  {name:15s} {sec * 1e3:9.1f} ms/step  {preset['batch'] / sec:8.2f} images/s"
            f"  {flops / sec / 1e12:7.3f} TFLOP/s")
    if gpu:
      rows[name]["mfu"] = flops / sec / 1e12 / FLAGS.peak_tflops
      line += f"  MFU {100 * rows[name]['mfu']:5.1f} %"
    print(line)
  if "jax" in seconds:
    rows["jax"]["peak_bytes"] = peak_device_bytes()
    for name in ("torch fp32", "torch autocast"):
      if name in seconds:
        rows[name]["jax_speedup"] = seconds[name] / seconds["jax"]
        print(f"  JAX speed-up over {name}: {rows[name]['jax_speedup']:.2f}x")
  figures = {"bench": "train", "preset": FLAGS.preset, "dry_run": FLAGS.dry_run,
             "device": jax.devices()[0].device_kind, "torch_device": device, "shapes": preset,
             "frameworks": frameworks, "steps": rows, "input_overlap": None}

  def write():
    if FLAGS.json:
      pathlib.Path(FLAGS.json).write_text(json.dumps(figures, indent=2) + "\n")

  write()  # The step figures, before the overlap comparison that follows.
  token_reduction(vit.config_for("vitb14"), 448, 5)  # The paper's backbone and RoIs.
  if FLAGS.overlap_steps > 0 and "jax" in seconds:
    overlap = input_overlap(step_on, batch, 2 if FLAGS.dry_run else FLAGS.overlap_steps)
    print(f"input overlap, a loader as slow as the step ({1e3 * overlap['step_s']:.1f} ms each):"
          f" load+place+step+read {1e3 * overlap['sequential_s']:.1f} ms/step"
          f" ({overlap['sequential_over_sum']:.2f}x their sum); prefetched, no read-back"
          f" {1e3 * overlap['prefetched_s']:.1f} ms/step"
          f" ({overlap['prefetched_over_max']:.2f}x the larger of the two)")
    figures["input_overlap"] = overlap
    write()
  if "jax" in seconds:
    figures["eval_vs_train"] = versus = eval_against_train(
        step_on, eval_on, batch, 2 if FLAGS.dry_run else max(FLAGS.reps, 4))
    print(f"evaluation {versus['eval_images_per_s']:.1f} images/s against training"
          f" {versus['train_images_per_s']:.1f} ({versus['eval_over_train']:.2f}x)")
    write()


if __name__ == "__main__":
  app.run(main)
