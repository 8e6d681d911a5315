"""The ``synthetic`` dataset: labels.csv and DICOMs written by ``tools/make_synthetic.py``; split
by study."""

from __future__ import annotations

import json

from attend_jax.errors import LabelError
from attend_jax.data.sources.base import Example, Listing, read_csv, require_dir, split_by_key

LAYOUT = """  ROOT/labels.csv   (image_id,study_id,patient_id,laterality,view,label,path,...,lesions)
  ROOT/images/<study_id>/<image_id>.dcm"""
WHERE = "python tools/make_synthetic.py --out ROOT"


def list_examples(root, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  oracle_proposals: int = 0) -> Listing:
  """``oracle_proposals`` > 0 attaches that many proposals from ``simulate_detector`` (an
  oracle: boxes around the true lesions, jittered, and false positives) to each row that has
  the image's width and height, for ablations against a real detector."""
  # The generator (scipy, pydicom, OpenCV) only where synthetic data is listed: every CLI
  # imports this package, and a training run on records never needs it.
  from attend_jax.data import synthetic

  root = require_dir(root, "Synthetic dataset", WHERE, LAYOUT)
  csv_path = root / "labels.csv"
  examples, bad = [], []
  for line, row in enumerate(read_csv(csv_path, ("image_id", "study_id", "laterality", "view",
                                                 "label", "path", "lesions")), start=2):
    if row["label"] not in ("0", "1"):
      bad.append(LabelError(csv_path, f"line {line}: label must be 0 or 1, got {row['label']!r}"))
      continue
    try:
      items = json.loads(row["lesions"])
      lesions = tuple(tuple(float(v) for v in item["box"]) for item in items)
      malignant = tuple(item.get("kind") in synthetic.MALIGNANT_KINDS for item in items)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      bad.append(LabelError(csv_path, f"line {line}: unreadable lesions column ({e})"))
      continue
    proposals = ()
    if oracle_proposals > 0 and row.get("width") and row.get("height"):
      try:
        size = int(row["width"]), int(row["height"])
      except ValueError as e:
        bad.append(LabelError(csv_path, f"line {line}: width and height must be integers ({e})"))
        continue
      proposals = tuple(map(tuple, synthetic.simulate_detector(
          lesions, *size, row["laterality"], count=oracle_proposals, key=row["image_id"])))
    examples.append(Example(
        image_id=row["image_id"], study_id=row["study_id"],
        patient_id=row.get("patient_id") or row["study_id"], laterality=row["laterality"],
        view=row["view"], label=int(row["label"]), path=str(root / row["path"]),
        split=split_by_key(row["study_id"], val_fraction, test_fraction), lesion_boxes=lesions,
        lesion_malignant=malignant, proposal_boxes=proposals))
  return Listing(examples, bad)
