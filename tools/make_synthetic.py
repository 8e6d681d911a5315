r"""Writes a synthetic mammography dataset: MG DICOM files plus labels.csv with lesion boxes.

  python tools/make_synthetic.py --out data/synthetic                      # 16 studies, 600-3000 px
  python tools/make_synthetic.py --out data/synthetic_small --num_studies 50 \
      --min_size 256 --max_size 512                                        # demo / test sized
  python tools/make_synthetic.py --out data/synthetic_film --film_fraction 1   # DDSM-like films

Each study holds the CC and MLO of both breasts. The layout and the picture are described in
``attend_jax.data.synthetic``; the same --seed always gives the same files.
"""

import logging
import sys
import time

from absl import flags
from pydicom.uid import JPEG2000Lossless

from attend_jax import cli
from attend_jax.data import synthetic
from attend_jax.progress import Progress

_OUT = flags.DEFINE_string("out", None, "Output folder; must not already hold a dataset.",
                           required=True)
_NUM_STUDIES = flags.DEFINE_integer("num_studies", 16, "Studies to write, 4 images each.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same files.")
_MIN_SIZE = flags.DEFINE_integer("min_size", 600, "Smallest long (vertical) side, in pixels.")
_MAX_SIZE = flags.DEFINE_integer("max_size", 3000, "Largest long (vertical) side, in pixels.")
_MALIGNANT = flags.DEFINE_float("malignant_fraction", 0.4, "Fraction of breasts with cancer.")
_BENIGN = flags.DEFINE_float("benign_fraction", 0.2, "Fraction of breasts with benign masses.")
_J2K = flags.DEFINE_float("jpeg2000_fraction", 0.3, "Fraction of images stored as JPEG 2000.")
_FILM = flags.DEFINE_float("film_fraction", 0.0, "Fraction of studies that look like digitised"
                           " film (DDSM): film edges, labels, bands; 16-bit RLE, no view tags.")


def main(argv):
  del argv
  # openjpeg logs every encoded tile at INFO, which absl would print.
  logging.getLogger("openjpeg").setLevel(logging.WARNING)
  start = time.perf_counter()
  try:
    images = synthetic.generate(
        _OUT.value, _NUM_STUDIES.value, seed=_SEED.value,
        size_range=(_MIN_SIZE.value, _MAX_SIZE.value), malignant_fraction=_MALIGNANT.value,
        benign_fraction=_BENIGN.value, jpeg2000_fraction=_J2K.value, film_fraction=_FILM.value,
        progress=Progress("writing DICOMs", "img"))
  except OSError as e:
    print(f"error: cannot write the dataset to {_OUT.value}: {e}", file=sys.stderr)
    return 1
  malignant = sum(im.label for im in images)
  j2k = sum(im.transfer_syntax == JPEG2000Lossless for im in images)
  film = sum(im.film for im in images)
  print(f"wrote {len(images)} images ({_NUM_STUDIES.value} studies, {malignant} malignant,"
        f" {j2k} JPEG 2000, {film} film) to {_OUT.value} in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  cli.run(main, errors=(synthetic.SyntheticError,))
