"""What every dataset source yields, and the checks they share."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pathlib
from typing import Iterable, Sequence

from attend_jax import paths
from attend_jax.errors import DataError, LabelError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Example:
  """One mammogram, before decoding."""

  image_id: str
  study_id: str  # Exam; CC and MLO of both breasts share it.
  patient_id: str
  laterality: str  # "L" / "R"
  view: str  # "CC" / "MLO" / ...
  label: int  # 1 = cancer.
  path: str  # The DICOM file.
  split: str  # "train" / "val" / "test".
  # Lesion boxes x0 y0 x1 y1 in original pixels, when the dataset gives them as boxes, and
  # which are cancers (empty: as the image's label says).
  lesion_boxes: tuple[tuple[float, float, float, float], ...] = ()
  lesion_malignant: tuple[bool, ...] = ()
  # ROI mask DICOMs (CBIS-DDSM), boxes read from them while preparing; which are cancers.
  mask_paths: tuple[str, ...] = ()
  mask_malignant: tuple[bool, ...] = ()
  proposals_path: str | None = None  # Reference-format detector proposals, if any.
  # Or proposals given directly: x0 y0 x1 y1 score in original pixels (the synthetic source).
  proposal_boxes: tuple[tuple[float, float, float, float, float], ...] = ()

  @property
  def breast_id(self) -> str:
    return f"{self.study_id}/{self.laterality}"


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where the user said; the message says where to get it and the layout."""


@dataclasses.dataclass
class Listing:
  """A source's examples plus the rows it had to skip, each with its reason."""

  examples: list[Example]
  bad: list[DataError]


def stable_fraction(key: str) -> float:
  """A number in [0, 1) fixed by ``key``, for splits that never change between runs."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def split_by_key(key: str, val_fraction: float, test_fraction: float = 0.0) -> str:
  u = stable_fraction(key)
  if u < test_fraction:
    return "test"
  if u < test_fraction + val_fraction:
    return "val"
  return "train"


def require_dir(root: str | os.PathLike, name: str, where: str, layout: str) -> pathlib.Path:
  root = paths.as_given(root)
  if not root.is_dir():
    raise DatasetNotFoundError(
        f"{name} not found at {root}.\nGet it from {where}.\nExpected layout:\n{layout}")
  return root


def read_csv(path: str | os.PathLike, required: Sequence[str],
             aliases: dict[str, Iterable[str]] | None = None) -> list[dict[str, str]]:
  """Rows of a CSV as dicts; LabelError if a required column is missing.

  ``aliases`` maps a canonical column name to other spellings found in the wild (CBIS-DDSM
  writes both ``breast density`` and ``breast_density``).
  """
  path = paths.as_given(path)
  try:
    # utf-8-sig: Excel saves CSVs with a byte-order mark, which would otherwise become part of
    # the first column's name.
    with (open(path, newline="", encoding="utf-8-sig") if paths.is_local(path)
          else io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")) as f:
      reader = csv.DictReader(f)
      header = [h.strip() for h in (reader.fieldnames or [])]
      rename = {}
      for canonical, others in (aliases or {}).items():
        for other in others:
          if other in header and canonical not in header:
            rename[other] = canonical
      missing = [c for c in required if c not in header and c not in rename.values()]
      if missing:
        raise LabelError(path, f"missing required column(s) {missing}; found {header}")
      return [{rename.get(k.strip(), k.strip()): (v or "").strip() for k, v in row.items()
               if k is not None} for row in reader]
  except FileNotFoundError as e:
    raise LabelError(path, "no such CSV file") from e
  except (UnicodeDecodeError, csv.Error) as e:
    raise LabelError(path, f"not a readable CSV ({e})") from e
