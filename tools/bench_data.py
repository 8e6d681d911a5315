r"""Input throughput: prepare vs raw DICOM decode, and the grain loader vs on-the-fly decoding.

  python tools/bench_data.py                      # 16 synthetic 2400-px mammograms per codec
  python tools/bench_data.py --size 3000 --num_studies 4

Everything is measured side by side in one run on the same files:

1. raw decode: ``pydicom.dcmread(f).pixel_array`` (openjpeg for JPEG 2000), one process;
2. prepare: ``attend_jax.data.prepare`` (decode, VOI, breast crop, resize, compress, write
   ArrayRecord) with --workers processes, reported per core;
3. loader: batches/s from the prepared records through ``pipeline.make_dataset`` (with
   augmentation), against decoding and cropping the DICOMs for every batch as the reference
   does.

Goals (from the issue): prepare within 2x of the raw decode cost; loader >= 20x faster.
"""

import os
import pathlib
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags
import pydicom

from attend_jax.data import pipeline, prepare, synthetic
from attend_jax.data.sources import synthetic as synthetic_source

_NUM_STUDIES = flags.DEFINE_integer("num_studies", 4, "Four-image studies per codec.")
_SIZE = flags.DEFINE_integer("size", 2400, "Mammogram height in pixels (width is ~0.8x).")
_LONG_SIDE = flags.DEFINE_integer("long_side", 1024, "Stored crop long side.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "prepare processes.")
_BATCH = flags.DEFINE_integer("batch", 4, "Loader batch size.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Loader batches to time.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write (default: a temp folder).")


def _raw_decode_seconds(paths) -> float:
  start = time.perf_counter()
  for path in paths:
    pydicom.dcmread(path).pixel_array  # noqa: B018  (decoding is the point)
  return time.perf_counter() - start


def _on_the_fly_batches_per_s(examples, opts, batch, n) -> float:
  """The reference's way: every batch decodes, VOI-maps and crops its DICOMs again."""
  start = time.perf_counter()
  for b in range(n):
    for j in range(batch):
      prepare.process_example(examples[(b * batch + j) % len(examples)], opts)
  return n / (time.perf_counter() - start)


def _loader_batches_per_s(out, config, batch, n, image_size) -> float:
  cfg = pipeline.PipelineConfig(data_dir=str(out), config=config, split="train", batch_size=batch,
                                image_size=image_size, augment=True)
  it = iter(pipeline.make_dataset(cfg))
  next(it)  # Opens the shards.
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  return n / (time.perf_counter() - start)


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_data_"))
  opts = prepare.PrepareOptions(long_side=_LONG_SIDE.value)
  print(f"{_NUM_STUDIES.value * 4} synthetic {_SIZE.value}-px mammograms per codec in {root};"
        f" prepare with {_WORKERS.value} worker(s)\n")
  print(f"{'codec':<14}{'raw decode':>12}{'prepare: per image':>20}{'+ write':>10}"
        f"{'prepare/raw':>13}{'pool start':>12}")
  rows = {}
  for codec, j2k in (("uncompressed", 0.0), ("jpeg2000", 1.0)):
    data = root / codec
    if not (data / "labels.csv").exists():
      shutil.rmtree(data, ignore_errors=True)
      synthetic.generate(data, _NUM_STUDIES.value, seed=1, size_range=(_SIZE.value, _SIZE.value),
                         jpeg2000_fraction=j2k)
    examples = synthetic_source.list_examples(data, 0.0, 0.0).examples
    raw = _raw_decode_seconds([ex.path for ex in examples]) / len(examples)
    out = root / f"{codec}_prepared"
    shutil.rmtree(out, ignore_errors=True)
    result = prepare.prepare("synthetic", data, out, opts, workers=_WORKERS.value,
                             val_fraction=0.0, test_fraction=0.0)
    # Worker time per image is the per-core cost; starting the pool is a fixed cost per run.
    decode = result.worker_seconds / len(examples)
    write = result.write_seconds / len(examples)
    start = result.decode_seconds - result.worker_seconds / _WORKERS.value
    rows[codec] = (examples, out)
    print(f"{codec:<14}{1e3 * raw:>9.0f} ms{1e3 * decode:>12.0f} ms/core{1e3 * write:>7.0f} ms"
          f"{(decode + write) / raw:>12.1f}x{start:>10.1f} s")

  print(f"\n{'loader':<14}{'records':>16}{'DICOM on the fly':>20}{'speed-up':>11}")
  for codec, (examples, out) in rows.items():
    fast = statistics.median(
        _loader_batches_per_s(out, f"synthetic_{_LONG_SIDE.value}", _BATCH.value, _BATCHES.value,
                              _LONG_SIDE.value) for _ in range(3))
    slow = _on_the_fly_batches_per_s(examples, opts, _BATCH.value, max(2, _BATCHES.value // 10))
    print(f"{codec:<14}{fast:>10.1f} bat/s{slow:>14.2f} bat/s{fast / slow:>10.1f}x")
  print(f"\n(times per image; batches of {_BATCH.value})")


if __name__ == "__main__":
  app.run(main)
