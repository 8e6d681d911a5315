"""DINOv2 weights from the network: Meta's URLs, the local download cache, and the file a
``--checkpoint`` names (a path, a URL, or none for Meta's)."""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
from typing import Callable

from attend_jax import paths
from attend_jax.errors import WeightsDownloadError
from attend_jax.models import vit

META_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{v}/dinov2_{v}{reg}_pretrain.pth"


def meta_url(variant: str, registers: bool) -> str:
  if variant not in vit.VARIANTS:
    raise ValueError(f"Unknown DINOv2 variant {variant!r}; expected one of {vit.VARIANTS}.")
  return META_URL.format(v=variant, reg="_reg4" if registers else "")


def cache_dir() -> pathlib.Path:
  return paths.cache_root() / "dinov2"


def fetch(url: str, dest_dir: pathlib.Path | None = None,
          progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
  """Returns the cached copy of ``url``, downloading it first if needed."""
  dest_dir = pathlib.Path(dest_dir or cache_dir())
  dest = dest_dir / url.rstrip("/").rsplit("/", 1)[-1]
  if dest.exists():
    return dest
  dest_dir.mkdir(parents=True, exist_ok=True)
  manual = (
      f"Download it by hand and put it at {dest} (e.g. `curl -L -o {dest} {url}`), "
      "or pass --checkpoint with the file's path."
  )
  tmp = tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False)
  try:
    with urllib.request.urlopen(url, timeout=60) as response, tmp:
      total = int(response.headers.get("Content-Length") or 0)
      done = 0
      while chunk := response.read(1 << 20):
        tmp.write(chunk)
        done += len(chunk)
        if progress:
          progress(done, total)
    if total and done != total:
      raise WeightsDownloadError(url, f"download stopped at {done} of {total} bytes. {manual}")
    os.replace(tmp.name, dest)
  except (urllib.error.URLError, OSError) as e:
    raise WeightsDownloadError(url, f"could not download ({e}). {manual}") from e
  finally:
    if os.path.exists(tmp.name):
      os.unlink(tmp.name)
  return dest


def resolve_source(checkpoint: str | None, variant: str, registers: bool,
                   progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
  """A local file for ``checkpoint``: a path, a URL (downloaded and cached), or None for Meta's."""
  if not checkpoint:
    checkpoint = meta_url(variant, registers)
  if re.match(r"^(https?|file)://", checkpoint):
    return fetch(checkpoint, progress=progress)
  return pathlib.Path(checkpoint).expanduser()
