r"""Draws a presentation state (GSPS) that ``predict --dicom_out`` wrote over its image, as a
viewer shows it: the RoIs (the anchor dashed), their attention weights and the probability.

  python tools/render_gsps.py preds/dicom/STUDY_UID/GSPS_IMAGE.dcm --out=gsps.png
  python tools/render_gsps.py GSPS.dcm --image=/data/new_exams/IMAGE.dcm --out=gsps.png

The image is the one the GSPS references: by default the source that the ``dicom_out.csv`` of
its --dicom_out folder lists for it, or --image (its SOP Instance UID must be the one the GSPS
references). docs/gsps.png was drawn this way (docs/predict.md#dicom-outputs).
"""

import csv
import pathlib

from absl import flags

from attend_jax import cli, dicom_out
from attend_jax.data import dicom
from attend_jax.errors import DataError

_IMAGE = flags.DEFINE_string("image", None, "The DICOM image the GSPS references (default: its"
                             " source in dicom_out.csv).")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.", required=True)
_WIDTH = flags.DEFINE_float("width", 5.0, "Width of the picture, in inches at 100 dpi.")


def source_of(gsps: pathlib.Path) -> pathlib.Path:
  """The image ``dicom_out.csv`` lists as the source of ``gsps`` (a file predict wrote into
  DIR/STUDY_UID/)."""
  table = gsps.resolve().parent.parent / dicom_out.TABLE
  if not table.exists():
    raise DataError(gsps, f"no {table} beside its study folder to find its image in; pass"
                    " --image")
  with open(table, newline="") as f:
    for row in csv.DictReader(f):
      if row["path"] and pathlib.Path(row["path"]).resolve() == gsps.resolve():
        return pathlib.Path(row["source"])
  raise DataError(gsps, f"not listed in {table}; pass --image")


def main(argv):
  if len(argv) != 2:
    raise DataError("tools/render_gsps.py", "give one GSPS file")
  path = pathlib.Path(argv[1])
  presentation = dicom.read_header(path)
  if "GraphicAnnotationSequence" not in presentation:
    raise DataError(path, "not a presentation state with graphic annotations")
  image = pathlib.Path(_IMAGE.value) if _IMAGE.value else source_of(path)
  dicom_out.check_reference(presentation, dicom.read_header(image), image, path.name)
  out = dicom_out.render_gsps(presentation, dicom.read_dicom(image).pixels, _OUT.value,
                              width=_WIDTH.value)
  print(f"{path.name} over {image.name} -> {out}")


if __name__ == "__main__":
  cli.run(main)
