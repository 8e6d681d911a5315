"""labels.csv of a synthetic dataset: one ``SyntheticImage`` row per image, its columns, and
reading it back."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib

from attend_jax.data.synthetic.film import Annotation
from attend_jax.data.synthetic.lesions import Lesion

LABEL_COLUMNS = ("image_id", "study_id", "patient_id", "laterality", "view", "label", "path",
                 "width", "height", "photometric", "bits_stored", "transfer_syntax", "lesions")
# Written after LABEL_COLUMNS when film_fraction > 0, so datasets without film stay as before.
FILM_COLUMNS = ("film", "breast_box", "label_boxes")


@dataclasses.dataclass(frozen=True)
class SyntheticImage:
  """One row of labels.csv."""

  image_id: str
  study_id: str
  patient_id: str
  laterality: str  # "L" / "R"
  view: str  # "CC" / "MLO"
  label: int  # 1 = malignant.
  path: str  # Relative to the dataset folder.
  width: int
  height: int
  photometric: str  # "MONOCHROME1" / "MONOCHROME2"
  bits_stored: int
  transfer_syntax: str  # UID.
  lesions: tuple[Lesion, ...]
  film: bool = False  # A digitised-film image (see ``film.draw``).
  # The tissue's x0, y0, x1, y1 before film edges and labels; recorded when film_fraction > 0.
  breast_box: tuple[int, int, int, int] | None = None
  label_boxes: tuple[Annotation, ...] = ()  # Film labels and markers.

  def row(self) -> dict[str, str]:
    """The LABEL_COLUMNS and FILM_COLUMNS values; the writer keeps the columns it writes."""
    row = {c: str(getattr(self, c)) for c in LABEL_COLUMNS}
    row["lesions"] = json.dumps([l.to_json() for l in self.lesions], separators=(",", ":"))
    row["film"] = str(int(self.film))
    row["breast_box"] = ("" if self.breast_box is None
                         else json.dumps(list(self.breast_box), separators=(",", ":")))
    row["label_boxes"] = json.dumps([a.to_json() for a in self.label_boxes],
                                    separators=(",", ":"))
    return row


def read_labels(out_dir: str | os.PathLike) -> list[SyntheticImage]:
  """labels.csv of a generated dataset, back as SyntheticImage rows; FILM_COLUMNS are optional."""
  with open(pathlib.Path(out_dir) / "labels.csv", newline="") as f:
    return [SyntheticImage(
        **{c: row[c] for c in ("image_id", "study_id", "patient_id", "laterality", "view", "path",
                               "photometric", "transfer_syntax")},
        label=int(row["label"]), width=int(row["width"]), height=int(row["height"]),
        bits_stored=int(row["bits_stored"]),
        lesions=tuple(Lesion(tuple(l["box"]), l["kind"]) for l in json.loads(row["lesions"])),
        film=row.get("film") == "1",
        breast_box=tuple(json.loads(row["breast_box"])) if row.get("breast_box") else None,
        label_boxes=tuple(Annotation(tuple(a["box"]), a["kind"], a["text"])
                          for a in json.loads(row.get("label_boxes") or "[]")))
        for row in csv.DictReader(f)]
