r"""Writes a synthetic mammography dataset: MG DICOM files plus labels.csv with lesion boxes.

  python tools/make_synthetic.py --out data/synthetic                      # 16 studies, 600-3000 px
  python tools/make_synthetic.py --out data/synthetic_small --num_studies 50 \
      --min_size 256 --max_size 512                                        # demo / test sized
  python tools/make_synthetic.py --out data/synthetic_film --film_fraction 1   # DDSM-like films

Each study holds the CC and MLO of both breasts. The layout and the picture are described in
``attend_jax.data.synthetic``; the same --seed always gives the same files.

``--layout`` writes the same kind of studies as a real dataset ships them, for trying a set-up
before downloading it (``attend_jax.data.layouts``): ``cbis_ddsm`` (the case-description CSVs,
the NBIA folders and the ROI masks), ``vindr`` (its two CSVs and ``images/``), ``rsna``
(``train.csv`` and ``train_images/``) or ``csv`` (the reference's three CSVs, ``images/`` and
``proposals/``, in pixels of its breast crop). The summary line ends with the
``tools/prepare_data.py`` command that reads the folder:

  python tools/make_synthetic.py --layout cbis_ddsm --out data/fake_cbis --min_size 400 \
      --max_size 800
  python tools/make_synthetic.py --layout csv --out data/fake_reference --num_studies 8
"""

import collections
import logging
import sys
import time

from absl import flags
from pydicom.uid import JPEG2000Lossless

from attend_jax import cli
from attend_jax.convert import dinov2
from attend_jax.data import layouts, synthetic
from attend_jax.models import vit
from configs import common as configs_common
from attend_jax.progress import Progress

_OUT = flags.DEFINE_string("out", None, "Output folder; must not already hold a dataset.",
                           required=True)
_LAYOUT = flags.DEFINE_enum("layout", "synthetic", ["synthetic", *layouts.LAYOUTS],
                            "On-disk layout: the generator's own (labels.csv, images/), or that"
                            " of a real dataset, read by tools/prepare_data.py --dataset LAYOUT.")
_NUM_STUDIES = flags.DEFINE_integer("num_studies", 16, "Studies to write, 4 images each"
                                    " (cbis_ddsm: the breasts with an abnormality).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same files.")
_MIN_SIZE = flags.DEFINE_integer("min_size", 600, "Smallest long (vertical) side, in pixels.")
_MAX_SIZE = flags.DEFINE_integer("max_size", 3000, "Largest long (vertical) side, in pixels.")
_MALIGNANT = flags.DEFINE_float("malignant_fraction", 0.4, "Fraction of breasts with cancer.")
_BENIGN = flags.DEFINE_float("benign_fraction", 0.2, "Fraction of breasts with benign masses.")
_J2K = flags.DEFINE_float("jpeg2000_fraction", None, "Fraction of images stored as JPEG 2000"
                          " (default 0.3; rsna 0.6; cbis_ddsm ships uncompressed: 0).")
_FILM = flags.DEFINE_float("film_fraction", None, "Fraction of studies that look like digitised"
                           " film (DDSM): film edges, labels, bands; 16-bit RLE, no view tags"
                           " (default 0; cbis_ddsm 1).")
_BACKBONE = flags.DEFINE_string(
    "backbone", None, "Also write random DINOv2 weights of the configs' :tiny size to this"
    " .safetensors file (timm's format), a stand-in for the pretrained file when trying a"
    " set-up with no download; convert it with tools/convert_dinov2.py --variant vitb14"
    " --width 64 --depth 4 --num_heads 2 --checkpoint FILE --out weights/dinov2_vitb14_tiny.")
_PROPOSALS = flags.DEFINE_integer("proposals_per_image", layouts.PROPOSALS_PER_IMAGE,
                                  "csv layout: proposals per file, as the reference's.")


def main(argv):
  del argv
  # openjpeg logs every encoded tile at INFO, which absl would print.
  logging.getLogger("openjpeg").setLevel(logging.WARNING)
  start = time.perf_counter()
  layout, out = _LAYOUT.value, _OUT.value
  # Flags left unset take the layout's defaults.
  args = {name: flag.value for name, flag in (("jpeg2000_fraction", _J2K),
                                                ("film_fraction", _FILM))
          if flag.value is not None}
  common = dict(seed=_SEED.value, size_range=(_MIN_SIZE.value, _MAX_SIZE.value),
                malignant_fraction=_MALIGNANT.value, benign_fraction=_BENIGN.value,
                progress=Progress("writing DICOMs", "img"), **args)
  try:
    if layout == "synthetic":
      images = synthetic.generate(out, _NUM_STUDIES.value, **common)
      splits = ""
    else:
      written = layouts.write(layout, out, _NUM_STUDIES.value,
                              proposals_per_image=_PROPOSALS.value, **common)
      images = [w.image for w in written]
      counts = collections.Counter(w.split for w in written)
      splits = "".join(f", {counts[s]} {s}" for s in ("train", "val", "test") if counts[s])
    if _BACKBONE.value:
      dinov2.write_random(_BACKBONE.value, vit.config_for("vitb14", **configs_common.TINY_VIT),
                          seed=_SEED.value)
  except OSError as e:
    print(f"error: cannot write the dataset to {out}: {e}", file=sys.stderr)
    return 1
  malignant = sum(im.label for im in images)
  j2k = sum(im.transfer_syntax == JPEG2000Lossless for im in images)
  film = sum(im.film for im in images)
  where = "" if layout == "synthetic" else f" in the {layout} layout"
  print(f"wrote {len(images)} images ({_NUM_STUDIES.value} studies, {malignant} malignant,"
        f" {j2k} JPEG 2000, {film} film{splits}){where} to {out} in"
        f" {time.perf_counter() - start:.1f} s; prepare them with:"
        f" {layouts.prepare_command(layout, out)}")
  if _BACKBONE.value:
    print(f"wrote random DINOv2 weights of the :tiny size to {_BACKBONE.value}; convert them"
          f" with: {configs_common.TINY_CONVERT.replace('FILE', _BACKBONE.value)}")
  return 0


if __name__ == "__main__":
  cli.run(main, errors=(synthetic.SyntheticError,))
