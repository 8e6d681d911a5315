r"""The trainer's whole loop at a config's production shapes: records, input pipeline, prefetch,
host-to-device transfer and the step together, on synthetic studies, from random weights.

  python tools/bench_loop.py --config=configs/vindr.py --per_device_batch=4 --json=loop.json
  .venv/bin/python tools/bench_loop.py --dry_run    # the same code path, tiny, on a CPU

It writes synthetic four-view studies a little larger than the config's image size, prepares
them as tools/prepare_data.py does (``--long_side`` = ``data.image_size``), and runs
``trainer.train_and_evaluate`` for ``--steps`` steps with ``data.batch_size`` =
``--per_device_batch`` x the devices, the config's dtype, remat and attention, and no pretrained
weights (nothing to download). It reports the images/s of the steps after the first log step
(compilation excluded), the ViT's MFU from the analytic count (tools/scale_report.py's, the
same FLOPs as bench_train), and the device's peak memory.
"""

from __future__ import annotations

import pathlib
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from attend_jax.data import prepare, synthetic
from attend_jax.models import build
from attend_jax.train import trainer
from bench_util import Rows, analytic_flops, peak_device_bytes

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vindr.py", "A training config.",
                                          lock_config=False)
_BATCH = flags.DEFINE_integer("per_device_batch", 4, "Images per device per step.")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps.")
_STUDIES = flags.DEFINE_integer("num_studies", 8, "Synthetic four-view studies to train on.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/bench_loop", "Data and run folder.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "The accelerator's dense bf16 peak, for MFU.")
_DRY = flags.DEFINE_bool("dry_run", False, "A tiny ViT on small images for a few steps: the code"
                         " path on a CPU.")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")


def shrink_for_dry_run(config) -> None:
  from configs import common

  common.smoke(config)
  config.data.image_size = 128
  config.model.roi_size = 28
  config.model.vit_overrides.update({"pretrained_grid": 2})


def main(argv):
  del argv
  config = _CONFIG.value
  steps = 4 if _DRY.value else _STEPS.value
  if _DRY.value:
    shrink_for_dry_run(config)
  size = config.data.image_size
  devices = jax.device_count()
  root = pathlib.Path(_WORKDIR.value)
  data = root / f"data_{size}"
  if not (data / "manifest.json").exists():
    synthetic.generate(data / "dicom", _STUDIES.value, seed=0,
                       size_range=(int(size * 1.1), int(size * 1.4)), jpeg2000_fraction=0.0)
    prepare.prepare("synthetic", data / "dicom", data, prepare.PrepareOptions(
        long_side=size, crop=config.data.prepare.crop,
        normalize_orientation=config.data.prepare.normalize_orientation))
  with config.unlocked():
    config.data.dir, config.data.name = str(data), f"synthetic_{size}"
    config.data.batch_size = config.data.eval_batch_size = _BATCH.value * devices
    config.data.eval_split = config.data.test_split = "val"
    config.model.pretrained = ""
    if config.proposals.source not in ("grid", "breast_only"):
      # Synthetic studies come with no proposal files and no trained detector: the breast and
      # its tiles, as many RoIs as the config's.
      config.proposals.source, config.proposals.anchor = "grid", True
      config.proposals.grid = int(round((config.proposals.topk - 1) ** 0.5))
      config.proposals.topk = config.proposals.grid ** 2 + 1
    config.train.steps = steps
    config.train.log_every = 2 if _DRY.value else 10
    config.train.eval_every = config.train.checkpoint_every = steps
    config.train.memory_check = True
  seen = []
  printed = trainer.log

  def log(message, *args):
    printed(message, *args)
    if message.startswith("step %d/%d"):
      seen.append((time.perf_counter(), args[0]))

  trainer.log = log
  run = root / "run"
  if run.exists():
    import shutil

    shutil.rmtree(run)
  start = time.perf_counter()
  trainer.train_and_evaluate(config, str(run))
  total = time.perf_counter() - start
  (t0, s0), (t1, s1) = seen[0], seen[-1]
  images_per_s = (s1 - s0) * config.data.batch_size / (t1 - t0)
  flops = analytic_flops(config, build.attend_config(config), config.data.batch_size,
                         True)["total"]
  mfu = flops * (s1 - s0) / (t1 - t0) / devices / (_PEAK.value * 1e12)
  rows = Rows(_JSON.value, bench="loop", dry_run=_DRY.value,
              device=jax.devices()[0].device_kind, devices=devices)
  rows.add({"config": config.data.name, "image_size": size, "roi_size": config.model.roi_size,
            "dtype": config.model.dtype, "remat": config.model.get("remat", "none"),
            "per_device_batch": _BATCH.value, "steps": steps, "images_per_s": images_per_s,
            "mfu": mfu, "peak_bytes": peak_device_bytes(), "run_seconds": total})
  print(f"loop: {images_per_s:.1f} images/s over steps {s0}..{s1} ({devices} devices x"
        f" {_BATCH.value} images), MFU {100 * mfu:.1f} % of {_PEAK.value:g} TFLOP/s, peak"
        f" {peak_device_bytes() or 0:.3g} bytes, whole run {total:.0f} s")


if __name__ == "__main__":
  app.run(main)
