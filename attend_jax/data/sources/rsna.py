"""RSNA Screening Mammography (Kaggle 2023): train.csv; val and test split off by patient."""

from __future__ import annotations

from attend_jax.errors import LabelError
from attend_jax.data.sources.base import Example, Listing, read_csv, require_dir, split_by_key

LAYOUT = """  ROOT/train.csv   (site_id,patient_id,image_id,laterality,view,age,cancer,...)
  ROOT/train_images/<patient_id>/<image_id>.dcm"""
WHERE = "https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data"


# RSNA has no official split: patients are split by a hash of their id.
VAL_FRACTION, TEST_FRACTION = 0.1, 0.1


def list_examples(root, val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION) -> Listing:
  root = require_dir(root, "RSNA Screening Mammography", WHERE, LAYOUT)
  csv_path = root / "train.csv"
  examples, bad = [], []
  for line, row in enumerate(read_csv(csv_path, ("patient_id", "image_id", "laterality", "view",
                                                 "cancer")), start=2):
    if row["cancer"] not in ("0", "1"):
      bad.append(LabelError(csv_path, f"line {line}: cancer must be 0 or 1, got {row['cancer']!r}"))
      continue
    patient = row["patient_id"]
    examples.append(Example(
        image_id=row["image_id"], study_id=patient, patient_id=patient,
        laterality=row["laterality"].upper(), view=row["view"].upper(), label=int(row["cancer"]),
        path=str(root / "train_images" / patient / f"{row['image_id']}.dcm"),
        split=split_by_key(patient, val_fraction, test_fraction)))
  return Listing(examples, bad)
