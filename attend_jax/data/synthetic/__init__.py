"""Synthetic mammograms; the generator lives in ``dataset`` until it is split by concern."""

from attend_jax.data.synthetic.dataset import *  # noqa: F401,F403
