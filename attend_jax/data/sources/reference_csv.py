"""The reference's own CSVs (``im_path,laterality,cancer,view[,study_id]``) and proposal files."""

from __future__ import annotations

import pathlib

from attend_jax import paths
from attend_jax.data import proposals
from attend_jax.errors import LabelError
from attend_jax.data.sources.base import SPLITS, Example, Listing, read_csv, require_dir

LAYOUT = """  CSV_DIR/{train,val,test}.csv   (im_path,laterality,cancer,view[,study_id])
  ROOT/<im_path>                   (e.g. <study_id>/<image_id>.dicom)
  PROPOSALS/<im_path without .dicom>_preds.txt   (optional: cx cy w h score per line)"""
WHERE = "the reference repository's CSVs, with the images of the dataset they index"


def list_examples(root, csv_dir=None, proposal_dir=None) -> Listing:
  root = require_dir(root, "Image folder", WHERE, LAYOUT)
  csv_dir = paths.as_given(csv_dir) if csv_dir else root
  found = {s: csv_dir / f"{s}.csv" for s in SPLITS if (csv_dir / f"{s}.csv").exists()}
  if not found:
    raise LabelError(csv_dir, "no train.csv, val.csv or test.csv here")
  examples, bad = [], []
  for split, csv_path in found.items():
    for line, row in enumerate(read_csv(csv_path, ("im_path", "laterality", "cancer", "view")),
                               start=2):
      if row["cancer"] not in ("0", "1"):
        bad.append(LabelError(csv_path, f"line {line}: cancer must be 0 or 1, got {row['cancer']!r}"))
        continue
      im_path = row["im_path"]
      parts = pathlib.PurePosixPath(im_path).parts
      study = row.get("study_id") or (parts[-2] if len(parts) > 1 else "")
      examples.append(Example(
          image_id=pathlib.PurePosixPath(im_path).stem, study_id=study, patient_id=study,
          laterality=row["laterality"].upper(), view=row["view"].upper(),
          label=int(row["cancer"]), path=str(root / im_path), split=split,
          proposals_path=(str(proposals.proposal_path(proposal_dir, im_path))
                          if proposal_dir else None)))
  return Listing(examples, bad)
