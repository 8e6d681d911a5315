"""grain input pipeline over the prepared ArrayRecord shards.

Per host: slice the records by ``jax.process_index()``, shuffle from a seed (a new order each
epoch), augment with a per-example RNG derived from the seed and the example's position (so
resuming replays exactly), pad to fixed shapes, batch, and optionally load in worker processes.
The iterator's ``get_state()`` / ``set_state()`` go into the training checkpoint.

Batches hold host numpy arrays:

- ``image`` (B, S, S) uint16, the breast crop at the top-left, zeros elsewhere;
- ``image_hw`` (B, 2) int32, the crop's real height and width inside the padding;
- ``label`` (B,) int32;
- ``lesion_boxes`` (B, L, 4) float32 ``x0 y0 x1 y1``, ``lesion_mask`` (B, L) bool and
  ``lesion_malignant`` (B, L) bool (the lesions that are cancers);
- ``proposals`` (B, K, 5) float32 ``cx cy w h score`` and ``proposal_mask`` (B, K) bool;
- ``brightness``, ``contrast`` (B,) float32 jitter factors (1.0 without augmentation);
- ``index`` (B,) int64, the record's index in the split, to look its ids up.

Geometric augmentation (flips, proposal jitter) happens here, on the host, because boxes must
follow the pixels. Intensity jitter only needs two numbers per image, so the host draws them and
the accelerator applies them (``device_augment.intensity_jitter``): the host then never touches
pixel values, and loading stays a decompress, a flip view and a copy.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from attend_jax import box_ops
from attend_jax.data import availability, records


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  data_dir: str
  config: str  # Builder config written by prepare_data, e.g. "synthetic_512".
  split: str = "train"
  batch_size: int = 8  # Per host.
  image_size: int = 512  # S: images are padded (never resized) to S x S.
  max_lesions: int = 8
  num_proposals: int = 16
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None  # None repeats forever.
  drop_remainder: bool = True
  augment: bool = False
  flip_prob: float = 0.5  # Each of horizontal and vertical.
  brightness: float = 0.1  # Multiplicative jitter, as torchvision ColorJitter(brightness).
  contrast: float = 0.1
  box_jitter: float = 0.05  # Proposal centre and size jitter, as a fraction of the box size.
  worker_count: int = 0  # Processes decoding records; 0 decodes in the calling thread.
  # Batches read ahead per process (or worker). grain's default, 500, holds 500 batches: 32 GB
  # of 2048 px images at batch 8.
  prefetch_batches: int = 4
  process_index: int = 0
  process_count: int = 1


def _pad_rows(rows: np.ndarray, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  rows = np.asarray(rows, np.float32).reshape(-1, width)[:n]
  out = np.zeros((n, width), np.float32)
  out[: len(rows)] = rows
  mask = np.zeros((n,), bool)
  mask[: len(rows)] = True
  return out, mask


def augment(record: dict[str, Any], rng: np.random.Generator, cfg: PipelineConfig) -> dict:
  """Flips and proposal jitter with boxes kept on their pixels; draws the intensity factors."""
  image = np.asarray(record["image"])
  h, w = image.shape
  lesions = np.asarray(record["lesion_boxes"], np.float32).reshape(-1, 4)
  props = np.asarray(record["proposals"], np.float32).reshape(-1, 5)
  corners = box_ops.to_xyxy(props)
  for axis, size in ((1, w), (0, h)):
    if rng.random() < cfg.flip_prob:
      image = np.flip(image, axis=axis)
      lesions = box_ops.flip(lesions, size, axis)
      corners = box_ops.flip(corners, size, axis)
  center = box_ops.to_cxcywh(corners)
  if len(center) and cfg.box_jitter > 0:
    size = np.maximum(center[:, 2:4], 1.0)
    center[:, :2] += rng.uniform(-cfg.box_jitter, cfg.box_jitter, (len(center), 2)) * size
    center[:, 2:4] *= 1 + rng.uniform(-cfg.box_jitter, cfg.box_jitter, (len(center), 2))
  props = np.concatenate([center, props[:, 4:5]], axis=1) if len(props) else props
  return {**record, "image": image, "lesion_boxes": lesions, "proposals": props.astype(np.float32),
          "brightness": np.float32(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
          "contrast": np.float32(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast))}


def to_fixed_shapes(record: dict[str, Any], index: int, image_size: int, num_proposals: int,
                    max_lesions: int = PipelineConfig.max_lesions) -> dict:
  """One record as one batch row: the image padded to ``image_size`` square, the lesions and
  proposals padded to fixed counts with masks."""
  image = np.asarray(record["image"])
  h, w = image.shape
  if h > image_size or w > image_size:
    raise ValueError(
        f"Record {index} is {h}x{w}, larger than image_size={image_size}; prepare the data"
        f" with --long_side {image_size} or raise image_size.")
  padded = np.zeros((image_size, image_size), np.uint16)
  padded[:h, :w] = image
  lesions, lesion_mask = _pad_rows(record["lesion_boxes"], max_lesions, 4)
  malignant, _ = _pad_rows(record["lesion_malignant"], max_lesions, 1)
  props, prop_mask = _pad_rows(record["proposals"], num_proposals, 5)
  return {
      "image": padded,
      "image_hw": np.array([h, w], np.int32),
      "label": np.int32(record["label"]),
      "lesion_boxes": lesions,
      "lesion_mask": lesion_mask,
      "lesion_malignant": (malignant[:, 0] > 0) & lesion_mask,
      "proposals": props,
      "proposal_mask": prop_mask,
      "brightness": np.float32(record.get("brightness", 1.0)),
      "contrast": np.float32(record.get("contrast", 1.0)),
      "index": np.int64(index),
  }


def _source(cfg: PipelineConfig) -> records.Records:
  """The split's records; a corrupt shard's error gives the command that prepares them again."""
  return records.data_source(cfg.data_dir, cfg.config, cfg.split, rerun=functools.partial(
      availability.prepare_command, cfg.data_dir, cfg.config))


def make_dataset(cfg: PipelineConfig) -> grain.IterDataset:
  source = _source(cfg)
  # Record indices travel with the records so that ids can be looked up after batching.
  ds = grain.MapDataset.range(len(source)).map(lambda i: (i, source[i]))
  ds = ds[cfg.process_index::cfg.process_count]
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds.repeat(cfg.num_epochs)
  if cfg.augment:
    ds = ds.random_map(lambda item, rng: (item[0], augment(item[1], rng, cfg)), seed=cfg.seed)
  ds = ds.map(lambda item: to_fixed_shapes(item[1], item[0], cfg.image_size, cfg.num_proposals,
                                           cfg.max_lesions))
  ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                            prefetch_buffer_size=cfg.prefetch_batches))
  if cfg.worker_count > 0:
    # grain's workers read its absl flags; outside an absl app (tests, notebooks) they are
    # unparsed, which grain treats as an error, so take the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
  return it


# Evaluation passes over fewer records per host than this decode in the calling thread: starting
# worker processes (each imports the pipeline's modules) takes longer than decoding them.
EVAL_WORKERS_FROM = 512


def for_split(config, split: str, train: bool) -> PipelineConfig:
  """A run's pipeline for ``split`` on this host, from its config: shuffled, augmented and
  endless for training, one ordered pass otherwise; the global batch divided among hosts.
  Training decodes in ``data.worker_count`` processes, and so does evaluation of a split of
  ``EVAL_WORKERS_FROM`` records per host or more."""
  batch = config.data.batch_size if train else config.data.eval_batch_size
  if batch % jax.process_count():
    raise ValueError(f"Batch size {batch} is not divisible by {jax.process_count()} hosts.")
  workers = config.data.worker_count
  if not train and workers:
    size = len(records.data_source(config.data.dir, config.data.name, split))
    workers = workers if size >= EVAL_WORKERS_FROM * jax.process_count() else 0
  return PipelineConfig(
      data_dir=config.data.dir, config=config.data.name, split=split,
      batch_size=batch // jax.process_count(), image_size=config.data.image_size,
      num_proposals=max(config.proposals.topk, 1), seed=config.seed, shuffle=train,
      num_epochs=None if train else 1, drop_remainder=train,
      augment=train and config.data.augment, worker_count=workers,
      process_index=jax.process_index(), process_count=jax.process_count())


def pad_batch(batch: dict, size: int) -> dict:
  """A short batch grown to ``size`` rows of zeros, with ``valid`` (size,) marking the real ones."""
  n = len(batch["image"])
  out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in
         batch.items()}
  out["image_hw"][n:] = 1  # Keeps padded examples' crops well defined.
  out["valid"] = np.arange(size) < n
  return out


ID_KEYS = ("image_id", "study_id", "patient_id", "laterality", "view")


def record_ids(cfg: PipelineConfig, indices, extra_keys: tuple[str, ...] = ()) -> list[dict]:
  """The string ids (image, study, patient, laterality, view) of records by index, and their
  ``extra_keys`` as stored (e.g. ``crop_box``): from the split's side table
  (``records.ids``), or, for records prepared before it, read from the records by a few threads
  (each read loads the whole record)."""
  table = records.ids(cfg.data_dir, cfg.config, cfg.split)
  if table is not None and all(k in records.ID_FIELDS for k in extra_keys):
    return [{k: table[int(i)][k] for k in (*ID_KEYS, *extra_keys)}
            for i in np.asarray(indices).reshape(-1)]
  source = _source(cfg)

  def read(i):
    record = source[int(i)]
    out = {k: (v.decode() if isinstance(v, bytes) else str(v))
           for k, v in record.items() if k in ID_KEYS}
    return out | {k: record[k] for k in extra_keys}

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return list(pool.map(read, np.asarray(indices).reshape(-1)))
