"""Dataset sources: each lists a dataset's images with labels, ids, split and lesion boxes."""

from attend_jax.data.sources import cbis_ddsm, reference_csv, rsna, synthetic, vindr
from attend_jax.data.sources.base import DatasetNotFoundError, Example, Listing

SOURCES = {
    "cbis_ddsm": cbis_ddsm.list_examples,
    "vindr": vindr.list_examples,
    "rsna": rsna.list_examples,
    "csv": reference_csv.list_examples,
    "synthetic": synthetic.list_examples,
}

__all__ = ["SOURCES", "DatasetNotFoundError", "Example", "Listing"]
