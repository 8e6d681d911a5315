"""Synthetic mammograms: seeded, deterministic MG DICOM files with labels and lesion boxes.

The demo, the tests and the notebooks use this dataset when no real one is at hand. Every file
is a valid "Digital Mammography X-Ray Image - For Presentation" object, and a run mixes what
real archives mix: MONOCHROME1 and MONOCHROME2, BitsStored 12, 14 and 16, Explicit VR Little
Endian and JPEG 2000 lossless, full-range windows and windows a reader must apply (the tissue
then fills only part of the stored range), and image sizes.

The picture, in display convention (dense tissue bright):

- The breast touches the chest wall at one side edge: an R breast at the left edge, facing
  right; an L breast at the right edge, facing left. Lateral (CC) and axilla (MLO) are at the
  top, so PatientOrientation is A\\L (R CC), P\\R (L CC), A\\FL (R MLO) and P\\FR (L MLO).
- Air is black. The tissue fades out over a skin-line falloff; the fibroglandular pattern is
  1/f^3 noise plus streaks converging to the nipple, thresholded by a per-patient density.
- MLO views add the pectoral muscle, a bright triangle in the upper corner at the chest wall.
- Malignant breasts (label 1) carry spiculated masses (irregular core and thin radiating
  spicules) or microcalcification clusters; benign breasts carry round, smooth,
  well-circumscribed masses; normal breasts carry nothing. A breast's findings show in both its
  CC and MLO at the same distance from the chest wall.
- Film mode (``film_fraction``) makes studies look like digitised screen film (DDSM): fog,
  grain and scanner bands, bright film edges on 1 to 3 sides, burned-in labels ("RMLO") and
  markers; 16-bit RLE Lossless files without laterality, view or VOI tags, laterality and view
  in the file name. labels.csv then also records each image's true breast box and the label
  boxes, which the breast-crop tests check ``breast.find_breast`` against.

``generate`` writes ``<out>/images/<study_id>/<image_id>.dcm`` (4 images per study: CC and MLO
of each breast) and ``<out>/labels.csv`` with the columns in ``LABEL_COLUMNS``; ``lesions`` is a
JSON list of ``{"box": [x0, y0, x1, y1], "kind": ...}``. Boxes are in stored-image pixels, with
x1 and y1 exclusive: ``pixels[y0:y1, x0:x1]`` holds the lesion. ``phantom`` renders one image in
memory. The same seed gives byte-identical files with the same numpy, openjpeg and Pillow
versions.

``generate`` is ``plan`` (the draws, one ``ImageJob`` per image), ``render`` (pixels and truth)
and ``dicom_dataset`` (the file); ``attend_jax.data.layouts`` writes the same studies as the real
datasets ship them (CBIS-DDSM, VinDr-Mammo, RSNA, the reference's CSVs) with these pieces.

The modules, bottom up: ``base`` (the error, checks, seed tag), ``lesions`` (finding kinds,
draws and patches), ``anatomy`` (one breast view), ``film`` (digitised film), ``labels``
(labels.csv rows), ``dicom_writer`` (ids, UIDs, the DICOM dataset), ``dataset`` (plan, render,
generate) and ``oracle`` (``simulate_detector``, a stand-in for the detector). The names below
are the package's interface.
"""

from __future__ import annotations

from attend_jax.data.synthetic.anatomy import Phantom, mask_box, phantom
from attend_jax.data.synthetic.base import MANUFACTURER, MIN_SIZE, SyntheticError
from attend_jax.data.synthetic.dataset import (ImageJob, Rendered, dicom_dataset, generate,
                                               map_jobs, plan, render)
from attend_jax.data.synthetic.dicom_writer import hex_id, save
from attend_jax.data.synthetic.film import MARKER, TEXT, Annotation
from attend_jax.data.synthetic.labels import (FILM_COLUMNS, LABEL_COLUMNS, SyntheticImage,
                                              read_labels)
from attend_jax.data.synthetic.lesions import (BENIGN_CALCIFICATIONS, BENIGN_KINDS,
                                               CALCIFICATION_CLUSTER, CALCIFICATIONS, KINDS,
                                               MALIGNANT_KINDS, ROUND_MASS, SPICULATED_MASS,
                                               Lesion)
from attend_jax.data.synthetic.oracle import simulate_detector

__all__ = [
    "Annotation", "BENIGN_CALCIFICATIONS", "BENIGN_KINDS", "CALCIFICATIONS",
    "CALCIFICATION_CLUSTER", "FILM_COLUMNS", "ImageJob", "KINDS", "LABEL_COLUMNS", "MALIGNANT_KINDS",
    "MANUFACTURER", "MARKER", "MIN_SIZE", "Lesion", "Phantom", "ROUND_MASS", "Rendered",
    "SPICULATED_MASS", "SyntheticError", "SyntheticImage", "TEXT", "dicom_dataset", "generate",
    "hex_id", "map_jobs", "mask_box", "phantom", "plan", "read_labels", "render", "save",
    "simulate_detector",
]
