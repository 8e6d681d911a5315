r"""Times the RoI detector: its inference throughput, and what it adds to a classifier step.

  .venv/bin/python tools/bench_detector.py                # CPU: a tiny ViT, well under 2 min
  python tools/bench_detector.py --preset=gpu             # ViT-B/14, 518 px detector, 2048 px
                                                          # images, 448 px RoIs, batch 32, bf16
  python tools/bench_detector.py --preset=gpu --batch=64 --variant=vits14 --dtype=float32
  .venv/bin/python tools/bench_detector.py --preset=gpu --dry_run   # its code path, tiny, CPU

``--dry_run`` keeps the preset (dtype, variant, the two-stage recipe) at the tiniest shapes that
still give the detector enough points for pre_nms, one call of each program, so a device session
never finds a broken benchmark. ``--json=PATH`` also writes the figures.

Two measurements, side by side in one run, on random weights and random batches in the input
pipeline's format (uint16 S x S images, proposals ``cx cy w h score``):

1. **Detector inference.** ``Detector.detect`` jitted on a batch of padded S x S images, as
   images/s, split into the backbone (uint16 -> [0, 1], antialiased resize to input_size,
   ImageNet normalisation, the ViT), the head (simple pyramid and FCOS towers; the dense
   outputs minus the backbone) and decoding (top pre_nms, greedy NMS on device; detect minus
   the dense outputs). The splits are differences of separately jitted programs, so XLA may
   fuse across a boundary in one and not in the other: read them as estimates.
2. **Added cost per classifier training step.** The trainer's own ``make_train_step`` on a
   batch that already holds proposals (the ``proposals.source = "files"`` path) against the
   proposal step of ``run.load_proposal_step`` (``proposals.source = "detector"``: the
   detector's top-k boxes, on device) followed by the same step. The classifier is the
   two-stage recipe's (``configs/common.py``: finetune + two_stage, so with the contrastive
   term). The proposal step is the real code path: a random-weight detector is saved as a run's
   own detector copy (``WORKDIR/detector``: config.json + weights) in a temporary folder and
   loaded from there by ``run.load_proposal_step``.

Repetitions alternate over all timed programs (``bench_util.interleaved``), so background
load hits all alike; each figure is the median of --reps after --warmup untimed calls.

Random weights give near-identical boxes on a regular lattice, so the NMS while loop's
number of rounds, and with it the decoding time, can differ for a trained detector.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from bench_util import forward_flops, interleaved
from flax import nnx

from attend_jax import run, tasks
from attend_jax.data import device_augment
from attend_jax.train import optim, trainer
from configs import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "gpu"],
                  "cpu: a tiny ViT and small images; gpu: the two-stage recipe's shapes.")
flags.DEFINE_enum("variant", None, ["vits14", "vitb14", "vitl14", "vitg14"],
                  "DINOv2 backbone of both the detector and the classifier (default: preset's).")
flags.DEFINE_boolean("tiny_vit", None, "Shrink the ViT to width 96, depth 4 (cpu preset's).")
flags.DEFINE_integer("image_size", None, "S: side of the padded stored images (512 | 2048).")
flags.DEFINE_integer("input_size", None, "Detector input side, a multiple of 14 (224 | 518).")
flags.DEFINE_integer("roi_size", None, "Classifier RoI side (112 | 448).")
flags.DEFINE_integer("fpn_dim", None, "Detector pyramid and head channels (64 | 256).")
flags.DEFINE_integer("topk", 5, "RoIs per image for the classifier, the breast anchor included.")
flags.DEFINE_integer("batch", None, "Images per batch, both measurements (4 | 32).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype of both models.")
flags.DEFINE_integer("reps", 10, "Timed calls per program, alternating.")
flags.DEFINE_integer("warmup", 2, "Untimed calls per program after compiling.")
flags.DEFINE_float("peak_tflops", 989.0, "Accelerator dense bf16 peak for MFU (H100/H200).")
flags.DEFINE_bool("dry_run", False, "The preset's code path at tiny shapes, one call each.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")

PRESETS = {
    "cpu": {"variant": "vits14", "tiny_vit": True, "image_size": 512, "input_size": 224,
            "roi_size": 112, "fpn_dim": 64, "batch": 4, "dtype": "float32"},
    "gpu": {"variant": "vitb14", "tiny_vit": False, "image_size": 2048, "input_size": 518,
            "roi_size": 448, "fpn_dim": 256, "batch": 32, "dtype": "bfloat16"},
}
TINY_VIT = {"width": 96, "depth": 4, "num_heads": 3, "pretrained_grid": 8}
# --dry_run: input_size 112 is 8 x 8 patches, 336 points over strides 7/14/28 for pre_nms 300.
DRY_RUN = {"tiny_vit": True, "batch": 1, "image_size": 128, "input_size": 112, "roi_size": 28,
           "fpn_dim": 16, "topk": 3}


def settings() -> dict:
  s = dict(PRESETS[FLAGS.preset])
  for name in s:
    if getattr(FLAGS, name) is not None:
      s[name] = getattr(FLAGS, name)
  s["topk"] = FLAGS.topk
  if FLAGS.dry_run:
    s.update(DRY_RUN)
  return s


def make_configs(s: dict):
  """(classifier config, detector config): the two-stage recipe (``common.finetune`` then
  ``common.two_stage``: loss and optimiser as trained) at the benchmark's shapes."""
  c = common.base()
  common.finetune(c, "vindr", s["batch"])
  common.two_stage(c, "")  # run.load_proposal_step finds the detector in the workdir instead.
  c.model.pretrained = ""  # Random weights: only the speed matters.
  c.model.variant = s["variant"]
  if s["tiny_vit"]:
    c.model.vit_overrides.update(TINY_VIT)
  c.model.dtype = s["dtype"]
  c.model.roi_size = s["roi_size"]
  c.data.image_size = s["image_size"]
  c.data.batch_size = s["batch"]
  c.detector.input_size = s["input_size"]
  c.detector.fpn_dim = s["fpn_dim"]
  c.proposals.topk = s["topk"]
  det = c.copy_and_resolve_references()
  det.task = "detect"
  det.proposals.source, det.proposals.topk = "breast_only", 1
  return c, det


def make_batch(s: dict, seed: int = 0) -> dict:
  """Random breast crops (zero padding beyond image_hw) and proposals, as the pipeline yields."""
  rng = np.random.default_rng(seed)
  b, size, k = s["batch"], s["image_size"], s["topk"]
  hw = np.stack([rng.integers(size // 2, size + 1, b), rng.integers(size // 3, size // 2, b)], 1)
  image = rng.integers(0, 65535, (b, size, size), dtype=np.uint16)
  rows, cols = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
  image[(rows >= hw[:, 0, None, None]) | (cols >= hw[:, 1, None, None])] = 0
  side = rng.uniform(0.1, 0.4, (b, k, 1)) * hw[:, None, :1]
  centre = rng.uniform(0.3, 0.7, (b, k, 2)) * hw[:, None, ::-1]
  return {
      "image": image,
      "image_hw": hw.astype(np.int32),
      "proposals": np.concatenate([centre, side, side, rng.uniform(0, 1, (b, k, 1))],
                                  -1).astype(np.float32),
      "proposal_mask": np.ones((b, k), bool),
      "lesion_boxes": np.zeros((b, 8, 4), np.float32),
      "lesion_mask": np.zeros((b, 8), bool),
      "lesion_malignant": np.zeros((b, 8), bool),
      "label": (np.arange(b) % 2).astype(np.int32),
      "brightness": np.ones(b, np.float32),
      "contrast": np.ones(b, np.float32),
  }


def save_detector(det_config, workdir: pathlib.Path):
  """A random-weight detector as ``workdir``'s own detector copy; returns the model."""
  model = tasks.get(det_config).build_model(det_config.seed)
  run.save_export(workdir / run.DETECTOR_COPY, model, det_config)
  model.eval()
  return model


def detector_programs(model, batch: dict) -> dict:
  """Blocking callables: backbone only, dense outputs, detect (dense + decoding)."""
  graph, state = nnx.split(model)
  state = jax.device_put(state, batch["image"].sharding)

  def images(batch):
    return device_augment.images(batch, train=False)

  @jax.jit
  def backbone(state, batch):
    m = nnx.merge(graph, state)
    return m.vision_model(m.inputs(images(batch)))[1]["patch_tokens"]

  @jax.jit
  def dense(state, batch):
    out = nnx.merge(graph, state)(images(batch), batch["image_hw"])
    return {"logits": out["logits"], "boxes": out["boxes"]}

  @jax.jit
  def detect(state, batch):
    return nnx.merge(graph, state).detect(images(batch), batch["image_hw"])

  inputs = {k: batch[k] for k in ("image", "image_hw")}
  return {name: (lambda fn=fn: jax.block_until_ready(fn(state, inputs)))
          for name, fn in (("backbone", backbone), ("dense", dense), ("detect", detect))}


def step_programs(config, workdir: pathlib.Path, batch: dict) -> dict:
  """Blocking callables: the train step on a files batch, and the proposal step then the step."""
  task = tasks.get(config)
  model = task.build_model(0)
  model.train()
  train_def, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  tx = optim.make(config, params, model.cfg.vit.depth)
  step_fn = trainer.make_train_step(task, train_def, tx, jax.random.key(1))
  state = {"params": params, "stats": stats, "opt": jax.jit(tx.init)(params)}
  # Committed like the batch and the proposal step's outputs: jit compiles anew for each mix of
  # committed and uncommitted arguments.
  state, rngs = jax.device_put((state, rngs), batch["image"].sharding)
  proposal_step = run.load_proposal_step(config, workdir)

  def step(batch):
    state["params"], state["stats"], state["opt"], terms = step_fn(
        state["params"], state["stats"], state["opt"], rngs, jnp.int32(0), batch)
    jax.block_until_ready(terms["loss"])

  def proposals_only():
    jax.block_until_ready(proposal_step(batch))

  return {"proposals": proposals_only, "step (files)": lambda: step(batch),
          "proposals+step": lambda: step(proposal_step(batch))}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's checkpoint chatter.
  s = settings()
  config, det_config = make_configs(s)
  batch = jax.device_put(make_batch(s), jax.devices()[0])
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    model = save_detector(det_config, workdir)
    fns = {**detector_programs(model, batch), **step_programs(config, workdir, batch)}
    vit_cfg = model.cfg.vit
    device = jax.devices()[0]
    tiny = " (tiny: width {width}, depth {depth})".format(**TINY_VIT) if s["tiny_vit"] else ""
    dry = " (dry run)" if FLAGS.dry_run else ""
    print(f"{FLAGS.preset}{dry}: {s['variant']}{tiny},"
          f" {s['dtype']}, batch {s['batch']}, images {s['image_size']} px; detector input"
          f" {s['input_size']} px, fpn {s['fpn_dim']}, pre_nms {model.cfg.pre_nms},"
          f" max_detections {model.cfg.max_detections}; classifier {s['topk']} RoIs x"
          f" {s['roi_size']} px")
    print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()})")
    first = {}
    for name, fn in fns.items():  # Compile everything before the timed, alternating calls.
      start = time.perf_counter()
      fn()
      first[name] = time.perf_counter() - start
    print("first call (compile + run), s: "
          + ", ".join(f"{name} {t:.1f}" for name, t in first.items()))
    sec = first if FLAGS.dry_run else interleaved(fns, FLAGS.reps, FLAGS.warmup)

  b = s["batch"]
  flops = forward_flops(vit_cfg, s["input_size"], b)
  gpu = jax.default_backend() == "gpu"
  print("detector inference (jit(detect) on uint16 S x S images):")
  parts = {"backbone": sec["backbone"], "head": sec["dense"] - sec["backbone"],
           "decode+NMS": sec["detect"] - sec["dense"]}
  for name, t in parts.items():
    print(f"  {name:15s} {t * 1e3:9.2f} ms  {100 * t / sec['detect']:5.1f} %")
  line = (f"  {'detect':15s} {sec['detect'] * 1e3:9.2f} ms  {b / sec['detect']:9.2f} images/s"
          f"  backbone {flops / sec['backbone'] / 1e12:.3f} TFLOP/s")
  if gpu:
    line += f" (MFU {100 * flops / sec['backbone'] / 1e12 / FLAGS.peak_tflops:.1f} %)"
  print(line)
  print("classifier train step (make_train_step), proposals from files vs from the detector:")
  for name in ("step (files)", "proposals", "proposals+step"):
    print(f"  {name:15s} {sec[name] * 1e3:9.2f} ms/step  {b / sec[name]:9.2f} images/s")
  added = sec["proposals+step"] - sec["step (files)"]
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(
        {"bench": "detector", "preset": FLAGS.preset, "dry_run": FLAGS.dry_run,
         "device": device.device_kind, "shapes": s,
         "ms": {name: 1e3 * t for name, t in sec.items()},
         "detect_images_per_s": b / sec["detect"],
         "backbone_tflops": flops / sec["backbone"] / 1e12,
         "backbone_mfu": flops / sec["backbone"] / 1e12 / FLAGS.peak_tflops if gpu else None,
         "step_files_images_per_s": b / sec["step (files)"],
         "step_detector_images_per_s": b / sec["proposals+step"]}, indent=2) + "\n")
  print(f"ratios: detector step / files step {sec['proposals+step'] / sec['step (files)']:.3f}x,"
        f" added {added * 1e3:.2f} ms/step ({100 * added / sec['step (files)']:.1f} %);"
        f" detect {b / sec['detect']:.2f} images/s;"
        f" backbone {100 * sec['backbone'] / sec['detect']:.1f} % of detect"
        f" [{device.device_kind}]")


if __name__ == "__main__":
  app.run(main)
