"""Dataset sources: each lists a dataset's images with labels, ids, split and lesion boxes."""

from attend_jax.data.sources import cbis_ddsm, reference_csv, rsna, synthetic_csv, vindr
from attend_jax.data.sources.base import DatasetNotFoundError, Example, Listing

SOURCES = {
    "cbis_ddsm": cbis_ddsm.list_examples,
    "vindr": vindr.list_examples,
    "rsna": rsna.list_examples,
    "csv": reference_csv.list_examples,
    "synthetic": synthetic_csv.list_examples,
}

# Where each dataset comes from and the layout its ROOT must have, for error messages.
ORIGINS = {name: (module.WHERE, module.LAYOUT) for name, module in (
    ("cbis_ddsm", cbis_ddsm), ("vindr", vindr), ("rsna", rsna), ("csv", reference_csv),
    ("synthetic", synthetic_csv))}

__all__ = ["ORIGINS", "SOURCES", "DatasetNotFoundError", "Example", "Listing"]
