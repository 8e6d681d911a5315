"""Whether a run's prepared dataset is there: one message for a dataset that is not yet (the
prepare command and the raw layout, never a traceback), the prepare options a run records and
follows, and the demo's on-demand synthetic data."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax

from attend_jax import paths
from attend_jax.data import records
from attend_jax.data.sources import ORIGINS, DatasetNotFoundError
from attend_jax.progress import Progress, log

if TYPE_CHECKING:
  from attend_jax.data import prepare

# Flags of tools/prepare_data.py that a dataset needs beyond --root and --out, and those of
# them that a prepared folder does not record.
_EXTRA_FLAGS = {"csv": " --csv_dir REFERENCE_CSVS --proposals PROPOSAL_DIR --keep_orientation"}
_UNRECORDED_FLAGS = {"csv": " --csv_dir REFERENCE_CSVS --proposals PROPOSAL_DIR"}


def is_prepared(data_dir: str | os.PathLike, name: str) -> bool:
  """A finished TFDS build of ``name`` (its dataset_info.json is written last)."""
  return any((paths.path(data_dir) / records.NAME / name).glob("*/dataset_info.json"))


def require(data_dir: str | os.PathLike, name: str, splits: Sequence[str] = (), *,
            flag: str, instead: str, split_advice: str, long_side: int | None = None
            ) -> list[str]:
  """The splits of the prepared dataset ``name`` in ``data_dir``, which must include ``splits``.

  Otherwise a DatasetNotFoundError that says what is missing and, for a dataset not prepared at
  all, the prepare command and where the raw dataset comes from with the layout its root must
  have. ``flag`` names the setting that chose ``data_dir``, ``instead`` says how to point at
  another folder, and ``split_advice`` what to do about a missing split.
  """
  given = data_dir
  data_dir = paths.path(data_dir)
  if not is_prepared(data_dir, name):
    dataset = name.rpartition("_")[0]
    where, layout = ORIGINS.get(dataset, ("", ""))
    lines = [f"No prepared dataset {name!r} in {data_dir} ({flag}).",
             "Prepare it once (it resumes if interrupted) with:",
             f"  {prepare_command(given, name, long_side)}",
             f"or {instead}."]
    if where:
      lines += [f"The raw dataset comes from {where}; ROOT must look like:", layout]
    raise DatasetNotFoundError("\n".join(lines))
  have = records.splits(data_dir, name)
  records.require_local(given)
  missing = [s for s in splits if s not in have]
  if missing:
    raise DatasetNotFoundError(
        f"The prepared dataset {name!r} in {data_dir} has no {' or '.join(map(repr, missing))}"
        f" split: it has the splits {have}, not {missing}; {split_advice}.")
  return have


def prepare_command(data_dir: str | os.PathLike, name: str, long_side: int | None = None) -> str:
  """The tools/prepare_data.py command that makes the dataset ``name`` in ``data_dir``: as it
  was made, where the folder's manifest says (dataset, root, options), else from the name, with
  ROOT (and a long side of ``long_side``, when the name does not say) to fill in."""
  from attend_jax.data import prepare

  dataset, _, size = name.rpartition("_")
  out = data_dir if str(data_dir) != "." else "OUT"
  manifest = paths.path(data_dir) / prepare.MANIFEST
  made = json.loads(manifest.read_text()) if manifest.exists() else {}
  if made.get("builder") != f"{records.NAME}/{name}":
    size = size if size.isdigit() else 0 if size == "full" else (long_side or "N")
    return (f"python tools/prepare_data.py --dataset {dataset or 'DATASET'} --root ROOT"
            f" --out {out} --long_side {size}{_EXTRA_FLAGS.get(dataset, '')}")
  opts = prepare.read_options(data_dir, name)
  extra = ""
  if opts.crop != ("reference" if dataset == "csv" else "robust"):
    extra += f" --crop={opts.crop}"
  if not opts.normalize_orientation:
    extra += " --keep_orientation"
  if opts.max_proposals != prepare.PrepareOptions.max_proposals:
    extra += f" --max_proposals {opts.max_proposals}"
  return (f"python tools/prepare_data.py --dataset {made['dataset']} --root {made['root']}"
          f" --out {out} --long_side {opts.long_side}{extra}"
          f"{_UNRECORDED_FLAGS.get(dataset, '')}")


def require_for_run(config, splits: Sequence[str]) -> list[str]:
  """``require`` for a run's ``config.data``: the splits it trains or evaluates on."""
  if "train" in splits and is_prepared(config.data.dir, config.data.name) and (
      "train" not in records.splits(config.data.dir, config.data.name)):
    advice = ("training needs a 'train' split; bad_files.csv in that folder lists the images"
              " that could not be used")
  else:
    advice = "set config.data.eval_split to one it has"
  return require(config.data.dir, config.data.name, splits, flag="config.data.dir",
                 instead="point --config.data.dir at the folder you prepared it into",
                 split_advice=advice)


class PrepareMismatchError(DatasetNotFoundError):
  """The prepared dataset was made another way (crop rule, orientation) than the config asks."""


def options(config) -> "prepare.PrepareOptions":
  """How a run's images are preprocessed: as its prepared dataset was (recorded at training
  start in ``config.data.prepared_with``), else as the config asks (``config.data.prepare``,
  e.g. a converted reference checkpoint), else the defaults at ``data.image_size``."""
  from attend_jax.data import prepare

  data = config.data
  if data.get("prepared_with"):
    return prepare.PrepareOptions(**dict(data.prepared_with))
  want = data.get("prepare") or {}
  long_side = want.get("long_side", -1)
  return prepare.PrepareOptions(
      long_side=data.image_size if long_side == -1 else long_side,
      normalize_orientation=want.get("normalize_orientation", True),
      crop=want.get("crop", "robust"))


def record_options(config) -> None:
  """Puts how the run's dataset was prepared into ``config.data.prepared_with`` (so config.json
  says it, and predict does the same); DatasetNotFoundError if the config asks otherwise."""
  from attend_jax.data import prepare

  made = prepare.read_options(config.data.dir, config.data.name)
  if made is None:
    return
  want = config.data.get("prepare") or {}
  wrong = [f"{key}={getattr(made, key)!r} (the config asks for {want[key]!r})"
           for key in ("crop", "normalize_orientation") if key in want
           and want[key] != getattr(made, key)]
  if wrong:
    raise PrepareMismatchError(
        f"The prepared dataset {config.data.name!r} in {config.data.dir} was made with"
        f" {', '.join(wrong)}; prepare it again with"
        f" --crop={want.get('crop', 'robust')}"
        + ("" if want.get("normalize_orientation", True) else " --keep_orientation")
        + ", or set --config.data.prepare.<key> to what it was made with.")
  with config.unlocked():
    config.data.prepared_with = dataclasses.asdict(made)


def ensure_synthetic(config) -> None:
  """The demo's data: synthetic DICOMs generated and prepared on first use (host 0 writes)."""
  syn = config.data.synthetic
  data_dir = paths.path(config.data.dir)
  if not syn.num_studies or (data_dir / "manifest.json").exists():
    return
  if not paths.is_local(data_dir):
    raise DatasetNotFoundError(
        f"{data_dir}: the demo's synthetic data is generated on local disk; point"
        " --config.data.dir at a local folder")
  data_dir = paths.local(data_dir)
  from attend_jax.data import prepare, synthetic

  if jax.process_index() == 0:
    dicoms = data_dir / "dicom"
    kwargs = dict(size_range=(syn.min_size, syn.max_size), benign_fraction=syn.benign_fraction,
                  conspicuity=syn.conspicuity,
                  difference=syn.get("difference", -1.0) if syn.get("difference", -1.0) >= 0
                  else None, lookalike_fraction=syn.get("lookalike_fraction", 0.0))
    if not (dicoms / "labels.csv").exists():
      log("Writing %d synthetic studies to %s", syn.num_studies, dicoms)
      synthetic.generate(dicoms, syn.num_studies, seed=config.seed,
                         progress=Progress("writing DICOMs", "img"), **kwargs)
    heldout = data_dir / "heldout"
    if syn.get("heldout_studies", 0) and not (heldout / "labels.csv").exists():
      # Another seed: other patients, never prepared, for predict on new DICOMs.
      synthetic.generate(heldout, syn.heldout_studies, seed=config.seed + 1, **kwargs)
    log("Preparing %s into %s", dicoms, data_dir)
    prepare.prepare("synthetic", dicoms, data_dir,
                    prepare.PrepareOptions(long_side=config.data.image_size),
                    progress=Progress("preparing", "img"),
                    oracle_proposals=syn.get("oracle_proposals", 0))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("synthetic data ready")
