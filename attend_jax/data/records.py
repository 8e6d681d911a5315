"""The TFDS builder that writes prepared mammograms as ArrayRecord shards (no TensorFlow).

Pixels are raw ``Tensor`` features: the ``Image`` feature would need TensorFlow to encode and is
8-bit. They are stored without zlib: breast crops compress only 1.5x, and decompressing a
1024-px crop costs 12 ms, three times the read, which would make zlib the loader's bottleneck.
Read back with ``tfds.data_source``, which grain indexes directly.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from attend_jax import paths
from attend_jax.errors import CorruptRecordsError, RemoteRecordsError

NAME = "mammograms"
LABEL_NAMES = ("no_cancer", "cancer")


class _NoCustomConfigWarning(logging.Filter):
  """Every prepared dataset is a builder config made at run time (``<dataset>_<long_side>``),
  on purpose; TFDS warns about that at every load."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_NoCustomConfigWarning())


def _features() -> tfds.features.FeaturesDict:
  text = tfds.features.Text()
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(None, None), dtype=np.uint16, encoding="bytes"),
      "label": tfds.features.ClassLabel(names=LABEL_NAMES),
      "lesion_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "lesion_malignant": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "proposals": tfds.features.Tensor(shape=(None, 5), dtype=np.float32),
      "image_id": text,
      "study_id": text,
      "patient_id": text,
      "laterality": text,
      "view": text,
      "crop_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
      "original_hw": tfds.features.Tensor(shape=(2,), dtype=np.int32),
      "flipped": tfds.features.Tensor(shape=(), dtype=np.bool_),
      "scale": tfds.features.Tensor(shape=(), dtype=np.float32),
  })


FEATURE_KEYS = frozenset(_features().keys())


class Mammograms(tfds.core.GeneratorBasedBuilder):
  """Breast crops decoded from DICOM by ``attend_jax.data.prepare``, one config per dataset."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Breast crops as uint16, lesion boxes, proposals, ids.",
                   "1.1.0": "lesion_malignant: which lesion boxes are cancers (benign"
                            " look-alikes are the contrastive term's hard negatives)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Run `python tools/prepare_data.py --dataset ... --root ... --out ...`; it decodes the"
      " DICOMs into the manual folder this builder reads.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(description=self.__doc__, features=_features(),
                                          supervised_keys=None)

  def _example_writer(self):
    return _StagedExampleWriter(file_format=self.info.file_format)

  # Nothing is downloaded: prepare prints its own progress instead of TFDS's banners.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  # Set by build_beam: each split's Beam transform, which decodes the DICOMs itself.
  beam_splits: dict | None = None

  def _split_generators(self, dl_manager):
    if self.beam_splits is not None:
      return self.beam_splits
    cache = pathlib.Path(dl_manager.manual_dir)
    return {split.name: self._generate_examples(split)
            for split in sorted(cache.iterdir()) if split.is_dir()}

  def _generate_examples(self, split_dir: pathlib.Path):
    for path in sorted(split_dir.glob("*.npz")):
      if path.name.endswith(".tmp.npz"):
        continue
      with np.load(path) as data:
        record = example({key: data[key] for key in data.files})
      yield record["image_id"], record


TEXT_FIELDS = ("image_id", "study_id", "patient_id", "laterality", "view")


def example(record: dict) -> dict:
  """A prepared record (``prepare.process_example``'s, or read back from the cache) as the
  builder's features: the reports' fields left out, text as str, the rest as numpy."""
  out = {k: np.asarray(v) for k, v in record.items() if k in FEATURE_KEYS}
  for key in TEXT_FIELDS:
    out[key] = str(out[key])
  return out


class _StagedExampleWriter(tfds.core.writer.ExampleWriter):
  """TFDS's shard writer, except that a shard for a bucket is written to a local file first
  and then copied: ArrayRecord's writer opens local files only (prepare on Beam writes the
  shards straight into a gs:// output)."""

  def write(self, path, examples):
    if paths.is_local(os.fspath(path)):
      return super().write(path, examples)
    with tempfile.TemporaryDirectory(prefix="attend_jax-shard-") as tmp:
      local = pathlib.Path(tmp) / epath.Path(path).name
      positions = super().write(local, examples)
      epath.Path(path).write_bytes(local.read_bytes())
    return positions


def builder(data_dir, config: str) -> Mammograms:
  return Mammograms(config=tfds.core.BuilderConfig(name=config), data_dir=str(data_dir))


def build(data_dir, config: str, cache_dir) -> None:
  """Writes the ArrayRecord shards from the per-image cache; a finished build is skipped."""
  b = builder(data_dir, config)
  tfds.disable_progress_bar()  # Its nested per-split bars; prepare draws one line of its own.
  b.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(cache_dir)))


def build_beam(data_dir, config: str, splits: dict, pipeline_options: list[str]) -> None:
  """Writes the ArrayRecord shards through TFDS's Beam path: ``splits`` maps each split to a
  Beam transform of (key, record) pairs; ``pipeline_options`` are Beam's flags (the runner and
  its settings). A finished build is skipped."""
  from apache_beam.options import pipeline_options as beam_options

  b = builder(data_dir, config)
  b.beam_splits = splits
  tfds.disable_progress_bar()
  b.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(
          beam_options=beam_options.PipelineOptions(pipeline_options)))


# Beside each split's shards: its records' ids and geometry in record order, written once by
# prepare, so that evaluation looks ids up instead of reading every record (image included)
# again after each pass.
IDS = "ids-{split}.json"
ID_FIELDS = {"image_id": str, "study_id": str, "patient_id": str, "laterality": str,
             "view": str, "crop_box": np.int32, "original_hw": np.int32, "flipped": np.bool_,
             "scale": np.float32}


def _ids_path(data_dir, config: str, split: str) -> epath.Path:
  return paths.path(builder(data_dir, config).data_dir) / IDS.format(split=split)


def write_ids(data_dir, config: str, missing_only: bool = False) -> None:
  """The side table of every split of a built dataset (the images are not decoded)."""
  b = builder(data_dir, config)
  for split in b.info.splits:
    if missing_only and _ids_path(data_dir, config, split).exists():
      continue
    source = Records(b.as_data_source(split=split,
                                      decoders={"image": tfds.decode.SkipDecoding()}),
                     data_dir, config)  # A corrupt shard names itself.
    rows = [{k: (v.decode() if isinstance(v, bytes) else str(v) if kind is str
                 else np.asarray(v).tolist())
             for k, kind in ID_FIELDS.items() for v in (record[k],)} for record in source]
    _ids_path(data_dir, config, split).write_text(json.dumps(rows) + "\n")


def ids(data_dir, config: str, split: str) -> list[dict] | None:
  """The split's side table (ids as str, geometry as numpy), or None for records prepared
  before it existed."""
  path = _ids_path(data_dir, config, split)
  if not path.exists():
    return None
  return [{k: v if ID_FIELDS[k] is str else np.asarray(v, ID_FIELDS[k]) for k, v in row.items()}
          for row in json.loads(path.read_text())]


def data_source(data_dir, config: str, split: str,
                rerun: Callable[[], str] | None = None) -> "Records":
  """A random-access source of decoded records (dicts of numpy arrays and bytes), from local
  disk: ArrayRecord's reader opens only local files (on a gs:// folder it hangs at the first
  record), so a bucket is refused with one line. ``rerun`` gives the command that prepares the
  records again, for the error a corrupt shard raises (``availability.prepare_command``; a caller
  above this module passes it, picklable, e.g. a ``functools.partial``)."""
  require_local(data_dir)
  return Records(builder(data_dir, config).as_data_source(split=split), data_dir, config,
                 rerun)


_MADE_THEM = "the tools/prepare_data.py command that made them"


class Records:
  """A split's records as TFDS reads them, except that a shard the reader cannot read (bytes
  flipped or cut off: ArrayRecord names neither the file nor a remedy) is a
  CorruptRecordsError naming the shard and the command that prepares it again. Picklable, for
  grain's worker processes."""

  def __init__(self, source, data_dir, config: str, rerun: Callable[[], str] | None = None):
    self._source, self._data_dir, self._config, self._rerun = source, data_dir, config, rerun

  def __len__(self) -> int:
    return len(self._source)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index):
    try:
      return self._source[index]
    except (RuntimeError, OSError) as e:  # Riegeli's "Corrupted ... file", a truncated shard.
      raise self._corrupt(int(index), e) from None

  def _corrupt(self, index: int, error: Exception) -> CorruptRecordsError:
    shard = "?"
    for part in self._source.dataset_info.splits[self._source.split].file_instructions:
      if index < part.take:
        shard = part.filename
        break
      index -= part.take
    folder = paths.path(self._data_dir) / NAME / self._config
    return CorruptRecordsError(shard, (
        f"the prepared records cannot be read ({error}); prepare them again: delete {folder} and"
        f" rerun {self._rerun() if self._rerun else _MADE_THEM}"))


def require_local(data_dir) -> None:
  """RemoteRecordsError for prepared records on a bucket."""
  if not paths.is_local(data_dir):
    raise RemoteRecordsError(data_dir, "the ArrayRecord reader opens local files only")


def splits(data_dir, config: str) -> list[str]:
  """The splits a prepared dataset has."""
  return list(builder(data_dir, config).info.splits.keys())
