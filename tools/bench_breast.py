r"""Breast-crop time per image: the robust rule against the reference rule, on the same pixels.

  python tools/bench_breast.py                    # one film and one full-field study, 4500 px
  python tools/bench_breast.py --size 3000 --repeats 10

The images come from the synthetic generator (film mode: edges, labels, bands; and the
full-field mode), decoded by the real reader. The reference rule (full-resolution contours) is
the baseline; the goal for the robust rule is well under a second on a 4500-px scan.
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags

from attend_jax.data import breast, dicom, synthetic

_SIZE = flags.DEFINE_integer("size", 4500, "Image height in pixels (width is ~0.8x).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per image and rule.")


def _median_ms(pixels, rule: str) -> float:
  breast.find_breast(pixels, rule=rule)  # Warm-up.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    breast.find_breast(pixels, rule=rule)
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    images = synthetic.generate(tmp, 2, seed=0, size_range=(_SIZE.value, _SIZE.value),
                                film_fraction=0.5, jpeg2000_fraction=0.0)
    for kind, film in (("film", True), ("full-field", False)):
      im = next(im for im in images if im.film == film)
      pixels = dicom.read_dicom(f"{tmp}/{im.path}").pixels
      robust, reference = _median_ms(pixels, "robust"), _median_ms(pixels, "reference")
      print(f"{kind} {pixels.shape[0]}x{pixels.shape[1]}: robust {robust:.1f} ms, reference"
            f" {reference:.1f} ms, ratio {robust / reference:.2f}")


if __name__ == "__main__":
  app.run(main)
