"""VinDr-Mammo (PhysioNet): breast-level labels, finding boxes, official split + val by study."""

from __future__ import annotations

import math
import pathlib

from attend_jax.errors import LabelError
from attend_jax.data.sources.base import Example, Listing, read_csv, require_dir, split_by_key

LAYOUT = """  ROOT/breast-level_annotations.csv   (study_id,series_id,image_id,laterality,view_position,
                                       height,width,breast_birads,breast_density,split)
  ROOT/finding_annotations.csv        (... finding_categories,finding_birads,xmin,ymin,xmax,ymax,split)
  ROOT/images/<study_id>/<image_id>.dicom"""
WHERE = "https://physionet.org/content/vindr-mammo/ (credentialed access)"
CANCER_BIRADS = (4, 5)
# Finding categories whose boxes train the detector.
LESION_CATEGORIES = ("mass", "calcification")
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "split")


def _birads(value: str) -> int:
  digits = value.upper().replace("BI-RADS", "").strip()
  if digits not in {"1", "2", "3", "4", "5"}:
    raise ValueError(value)
  return int(digits)


# Of the training studies, split off for validation by a hash of the study id.
VAL_FRACTION = 0.2


def list_examples(root, val_fraction: float = VAL_FRACTION) -> Listing:
  root = require_dir(root, "VinDr-Mammo", WHERE, LAYOUT)
  breast_csv = root / "breast-level_annotations.csv"
  rows = read_csv(breast_csv, BREAST_COLUMNS)
  boxes = _lesion_boxes(root / "finding_annotations.csv")
  examples, bad = [], []
  for line, row in enumerate(rows, start=2):
    try:
      label = int(_birads(row["breast_birads"]) in CANCER_BIRADS)
    except ValueError:
      bad.append(LabelError(breast_csv, f"line {line}: unknown breast_birads"
                            f" {row['breast_birads']!r} (expected BI-RADS 1-5)"))
      continue
    official = row["split"].lower()
    if official not in ("training", "test"):
      bad.append(LabelError(breast_csv, f"line {line}: unknown split {row['split']!r}"))
      continue
    split = "test" if official == "test" else split_by_key(row["study_id"], val_fraction)
    examples.append(Example(
        image_id=row["image_id"], study_id=row["study_id"], patient_id=row["study_id"],
        laterality=row["laterality"].upper(), view=row["view_position"].upper(), label=label,
        path=str(root / "images" / row["study_id"] / f"{row['image_id']}.dicom"), split=split,
        lesion_boxes=tuple(b for b, _ in boxes.get(row["image_id"], ())),
        lesion_malignant=tuple(m for _, m in boxes.get(row["image_id"], ()))))
  return Listing(examples, bad)


def _lesion_boxes(path: pathlib.Path) -> dict[str, list[tuple[tuple[float, ...], bool]]]:
  """Per image, (mass or calcification box, is a cancer: finding BI-RADS 4 or 5)."""
  if not path.exists():
    return {}
  boxes: dict[str, list] = {}
  for row in read_csv(path, ("image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax")):
    categories = row["finding_categories"].lower()
    if not any(c in categories for c in LESION_CATEGORIES):
      continue
    try:
      box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
      continue
    if all(math.isfinite(v) for v in box) and box[2] > box[0] and box[3] > box[1]:
      try:
        cancer = _birads(row.get("finding_birads", "")) in CANCER_BIRADS
      except ValueError:
        cancer = False
      boxes.setdefault(row["image_id"], []).append((box, cancer))
  return boxes
