r"""Input throughput: prepare vs raw DICOM decode, and the grain loader vs on-the-fly decoding.

  python tools/bench_data.py                      # 16 synthetic 2400-px mammograms per codec
  python tools/bench_data.py --size 3000 --num_studies 4
  # Production shapes: configs/vindr.py (2048 px, batch 32) and vindr_reference.py (full
  # resolution in 4096-px squares, batch 4); --target is a projected images/s per accelerator.
  python tools/bench_data.py --size 3500 --long_side 2048 --batch 32 --codecs uncompressed \
      --target 136 --json bench_data_2048.json
  python tools/bench_data.py --size 3500 --long_side 4096 --batch 4 --codecs uncompressed \
      --target 23 --json bench_data_4096.json

Everything is measured side by side in one run on the same files:

1. raw decode: ``pydicom.dcmread(f).pixel_array`` (openjpeg for JPEG 2000), one process;
2. prepare: ``attend_jax.data.prepare`` (decode, VOI, breast crop, resize, compress, write
   ArrayRecord) with --workers processes, reported per core;
3. loader: batches/s from the prepared records through ``pipeline.make_dataset`` (with
   augmentation), against decoding and cropping the DICOMs for every batch as the reference
   does.

Goals (from the issue): prepare within 2x of the raw decode cost; loader >= 20x faster.

4. --beam: prepare end to end (listing, decode, write; start-up included) in images/s, the
   local pool against the same run on Apache Beam's DirectRunner with 1 and 2 workers
   (multi-processing), on the first codec's files; the records must be the same.

5. feed: what one accelerator needs from its host. The loader's images per CPU-second of this
   process (all its threads; wall-clock-free, so a busy machine does not skew it), the bytes
   per image read from the records on disk and sent to the device (the padded S x S uint16
   batch and the rest), and at ``--target`` images/s per accelerator (tools/scale_report.py's
   projection) the host cores, disk and host-to-device bandwidth that takes.
"""

import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags
import pydicom

import numpy as np

from attend_jax.data import pipeline, prepare, synthetic
from attend_jax.data import records as records_lib
from attend_jax.data.sources import synthetic_csv

_NUM_STUDIES = flags.DEFINE_integer("num_studies", 4, "Four-image studies per codec.")
_SIZE = flags.DEFINE_integer("size", 2400, "Mammogram height in pixels (width is ~0.8x).")
_LONG_SIDE = flags.DEFINE_integer("long_side", 1024, "Stored crop long side.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "prepare processes.")
_BATCH = flags.DEFINE_integer("batch", 4, "Loader batch size.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Loader batches to time.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write (default: a temp folder).")
_CODECS = flags.DEFINE_list("codecs", ["uncompressed", "jpeg2000"], "DICOM codecs to generate.")
_TARGET = flags.DEFINE_float("target", 0.0,
                             "Images/s one accelerator consumes (0: leave the feed section out).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_BEAM = flags.DEFINE_bool("beam", False, "Also time prepare on Beam's DirectRunner (1 and 2"
                          " workers) against the local pool (needs the [beam] extra).")
CODECS = {"uncompressed": 0.0, "jpeg2000": 1.0}


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


def _feed(out, config, batch, n, image_size) -> dict:
  """Loader cost per image in CPU seconds, and bytes per image from disk and to the device."""
  cfg = pipeline.PipelineConfig(data_dir=str(out), config=config, split="train", batch_size=batch,
                                image_size=image_size, augment=True)
  it = iter(pipeline.make_dataset(cfg))
  first = next(it)
  cpu, wall = time.process_time(), time.perf_counter()
  for _ in range(n):
    next(it)
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  files = [f for f in pathlib.Path(out).rglob("*") if f.is_file() and "array_record" in f.name
           and "train" in f.name]
  records = len(records_lib.data_source(str(out), config, "train"))
  return {"images_per_cpu_s": n * batch / cpu, "images_per_wall_s": n * batch / wall,
          "read_bytes_per_image": sum(f.stat().st_size for f in files) / records,
          "sent_bytes_per_image": sum(np.asarray(v).nbytes for v in first.values()) / batch,
          "image_bytes_per_image": np.asarray(first["image"]).nbytes / batch,
          "real_pixel_fraction": float(np.mean(np.prod(first["image_hw"], 1))) / image_size**2}


def _beam_rates(data, out_root, opts) -> dict[str, float]:
  """Images/s of prepare on the local pool ("pool") and on the DirectRunner with n workers
  ("direct_<n>"), each into a fresh folder; each Beam run's records are checked against the
  pool's."""
  runs = {"pool": None}
  for n in (1, 2):
    runs[f"direct_{n}"] = ["--runner=DirectRunner", f"--direct_num_workers={n}",
                           "--direct_running_mode=multi_processing"]
  rates = {}
  for name, beam_options in runs.items():
    out = out_root / name
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = prepare.prepare("synthetic", data, out, opts, workers=_WORKERS.value,
                             beam_options=beam_options, val_fraction=0.0, test_fraction=0.0)
    seconds = time.perf_counter() - start
    rates[name] = sum(c["images"] for c in result.counts.values()) / seconds
    if beam_options is not None:
      _check_same_records(out_root / "pool", out, f"synthetic_{_LONG_SIDE.value}")
  return rates


def _check_same_records(a, b, config) -> None:
  for split in records_lib.splits(a, config):
    ours, theirs = (records_lib.data_source(str(d), config, split) for d in (a, b))
    if len(ours) != len(theirs) or any(
        not np.array_equal(ours[i][k], theirs[i][k]) for i in range(len(ours)) for k in ours[i]):
      raise SystemExit(f"the Beam run's {split} records differ from the pool's ({b} vs {a})")


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_data_"))
  opts = prepare.PrepareOptions(long_side=_LONG_SIDE.value)
  print(f"{_NUM_STUDIES.value * 4} synthetic {_SIZE.value}-px mammograms per codec in {root};"
        f" prepare with {_WORKERS.value} worker(s)\n")
  print(f"{'codec':<14}{'raw decode':>12}{'prepare: per image':>20}{'+ write':>10}"
        f"{'prepare/raw':>13}{'pool start':>12}")
  rows = {}
  for codec, j2k in ((c, CODECS[c]) for c in _CODECS.value):
    data = root / codec
    if not (data / "labels.csv").exists():
      shutil.rmtree(data, ignore_errors=True)
      synthetic.generate(data, _NUM_STUDIES.value, seed=1, size_range=(_SIZE.value, _SIZE.value),
                         jpeg2000_fraction=j2k)
    examples = synthetic_csv.list_examples(data, 0.0, 0.0).examples
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
  figures = {"size": _SIZE.value, "long_side": _LONG_SIDE.value, "batch": _BATCH.value}
  if _BEAM.value:
    codec = next(iter(rows))
    figures["beam"] = _beam_rates(root / codec, root / f"{codec}_beam", opts)
    pool = figures["beam"]["pool"]
    print(f"\nprepare end to end on the {len(rows[codec][0])} {codec} images (images/s, wall"
          " clock, start-up included):")
    labels = {"pool": f"local pool, {_WORKERS.value} workers",
              "direct_1": "Beam DirectRunner, 1 worker", "direct_2": "Beam DirectRunner, 2 workers"}
    for name, rate in figures["beam"].items():
      print(f"  {labels[name]:<30}{rate:>8.2f} images/s{rate / pool:>8.2f}x the pool")
  if _TARGET.value:
    out = next(iter(rows.values()))[1]
    feed = _feed(out, f"synthetic_{_LONG_SIDE.value}", _BATCH.value, _BATCHES.value,
                 _LONG_SIDE.value)
    target = _TARGET.value
    feed.update(target_images_per_s=target, cores=target / feed["images_per_cpu_s"],
                read_mb_per_s=target * feed["read_bytes_per_image"] / 1e6,
                sent_mb_per_s=target * feed["sent_bytes_per_image"] / 1e6)
    figures["feed"] = feed
    mb = 1e6
    print(f"\nfeed at {_LONG_SIDE.value} px, batch {_BATCH.value}: loader"
          f" {feed['images_per_cpu_s']:.1f} images per CPU-second"
          f" ({feed['images_per_wall_s']:.1f} images/s wall);"
          f" per image {feed['read_bytes_per_image'] / mb:.2f} MB read,"
          f" {feed['sent_bytes_per_image'] / mb:.2f} MB sent"
          f" ({100 * feed['real_pixel_fraction']:.0f} % of the square is breast crop)")
    print(f"at {target:g} images/s per accelerator: {feed['cores']:.2f} host cores,"
          f" {feed['read_mb_per_s']:.0f} MB/s from disk, {feed['sent_mb_per_s']:.0f} MB/s to"
          " the device")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
