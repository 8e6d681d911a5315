"""CBIS-DDSM (TCIA): mass and calcification CSVs, NBIA folder naming, boxes from ROI masks."""

from __future__ import annotations

from attend_jax import paths
from attend_jax.errors import LabelError
from attend_jax.data.sources.base import (Example, Listing, read_csv, require_dir,
                                          split_by_key)

LAYOUT = """  ROOT/mass_case_description_{train,test}_set.csv
  ROOT/calc_case_description_{train,test}_set.csv
  ROOT/<NBIA folders>/Mass-Training_P_00001_LEFT_CC/<date-study>/<series>/1-1.dcm
  ROOT/<NBIA folders>/Mass-Training_P_00001_LEFT_CC_1/<date-study>/<series>/1-1.dcm  (ROI mask)
  (the DICOM folders may sit anywhere below ROOT, e.g. in CBIS-DDSM/)"""
WHERE = "https://www.cancerimagingarchive.net/collection/cbis-ddsm/ (NBIA Data Retriever)"
CSV_FILES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
class MissingMaskError(LabelError):
  """A CSV row whose ROI mask is not on disk: its image is used, without that lesion's box."""


PATHOLOGIES = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
REQUIRED = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology",
            "image file path", "ROI mask file path")
ALIASES = {"breast_density": ("breast density",)}


def folder_index(root) -> dict[str, list]:
  """Maps each NBIA top folder name (e.g. ``Mass-Training_P_00001_LEFT_CC_1``) to its DICOMs,
  in the order of their folders and names. ``root`` may be a bucket (``gs://``)."""
  index: dict[str, list] = {}
  for rel in paths.files_below(root):
    *folders, name = rel.split("/")
    if not name.lower().endswith(".dcm"):
      continue
    top = next((p for p in folders if p.startswith(("Mass-", "Calc-"))), None)
    if top:
      index.setdefault(top, []).append(root / rel)
  return index


# Of the training patients, split off for validation by a hash of the patient id.
VAL_FRACTION = 0.15


def list_examples(root, val_fraction: float = VAL_FRACTION) -> Listing:
  root = require_dir(root, "CBIS-DDSM", WHERE, LAYOUT)
  present = {key: root / name for key, name in CSV_FILES.items() if (root / name).exists()}
  if not present:
    raise LabelError(root, f"none of the CBIS-DDSM CSVs {sorted(CSV_FILES.values())} is here")
  index = folder_index(root)
  images: dict[str, dict] = {}
  bad = []
  for (kind, official), csv_path in sorted(present.items()):
    for line, row in enumerate(read_csv(csv_path, REQUIRED, ALIASES), start=2):
      pathology = row["pathology"].upper()
      if pathology not in PATHOLOGIES:
        bad.append(LabelError(csv_path, f"line {line}: unknown pathology {row['pathology']!r}"
                              f" (expected one of {sorted(PATHOLOGIES)})"))
        continue
      top = row["image file path"].replace("\\", "/").split("/")[0]
      mask_top = row["ROI mask file path"].replace("\\", "/").split("/")[0]
      if top not in index:
        bad.append(LabelError(csv_path, f"line {line}: no DICOM folder {top!r} under {root}"))
        continue
      entry = images.setdefault(top, {"row": row, "official": official, "label": 0,
                                      "masks": []})
      entry["label"] = max(entry["label"], PATHOLOGIES[pathology])
      if mask_top not in index:
        bad.append(MissingMaskError(csv_path, f"line {line}: no ROI mask folder {mask_top!r}"
                                    f" under {root}; {top} is kept without this lesion's box"))
      entry["masks"].extend((str(p), PATHOLOGIES[pathology] == 1)
                            for p in index.get(mask_top, []))
  examples = []
  for top, entry in sorted(images.items()):
    row = entry["row"]
    patient = row["patient_id"]
    split = "test" if entry["official"] == "test" else split_by_key(patient, val_fraction)
    examples.append(Example(
        image_id=top, study_id=patient, patient_id=patient,
        laterality=row["left or right breast"].upper()[:1], view=row["image view"].upper(),
        label=entry["label"], path=str(index[top][0]), split=split,
        mask_paths=tuple(p for p, _ in entry["masks"]),
        mask_malignant=tuple(m for _, m in entry["masks"])))
  return Listing(examples, bad)
