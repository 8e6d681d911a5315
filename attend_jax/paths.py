"""Folders a user names: local paths or bucket URLs (``gs://...``, whatever ``etils.epath`` opens).

Every path a user gives (a workdir, ``config.data.dir``, prepare's ``--out``, converted weights,
``proposals.detector``, predict and evaluate's folders) goes through ``path``, and everything
written there goes through ``epath``, orbax or ``staged``. ``pathlib.Path`` would turn
``gs://b/run`` into a local folder named ``gs:``, and each host of a pod slice would write its
own (``tests/test_paths.py`` holds the package to this).

What cannot write to a bucket directly (tensorboardX, ``logging.FileHandler``, csv and
matplotlib writers) writes into a local folder that is then uploaded: ``staged`` for a folder
written in one go, ``Mirror`` for files that grow during a run.

A bucket whose storage service does not answer (no network, a firewall, a wrong emulator
address) would cost a minute of gcsfs's retries and then name a host, not the folder; a run's
first touch of a bucket therefore probes it (``check_reachable``), in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from etils import epath



def cache_root() -> pathlib.Path:
  """attend_jax's local cache (downloaded weights, the CPU attention kernel's build):
  ``$ATTEND_JAX_CACHE``, else ``$XDG_CACHE_HOME/attend_jax``, else ``~/.cache/attend_jax``."""
  return pathlib.Path(os.environ.get("ATTEND_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attend_jax"))


def path(p: str | os.PathLike) -> epath.Path:
  """``p`` as an ``epath.Path``: a URL as it is, a local path made absolute."""
  text = os.fspath(p)
  if is_local(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  return epath.Path(text)


def as_given(p: str | os.PathLike) -> pathlib.Path | epath.Path:
  """A local path as given (a relative one stays relative, as in a dataset's listing), a URL as
  an ``epath.Path``: for code that joins names onto a folder that may be on a bucket."""
  return pathlib.Path(p) if is_local(p) else path(p)


def is_local(p: str | os.PathLike) -> bool:
  """A path on this machine's file system (no URL scheme, or ``file:``)."""
  return urllib.parse.urlsplit(os.fspath(p)).scheme in ("", "file")


def local(p: str | os.PathLike) -> pathlib.Path:
  """``p`` as a ``pathlib.Path`` for code that needs the local file system (flock, C++ readers);
  ValueError for a URL."""
  if not is_local(p):
    raise ValueError(f"{p} is not on the local file system")
  return pathlib.Path(os.fspath(path(p)))


# The probe: PROBE_TRIES requests of PROBE_TIMEOUT_S each, PROBE_PAUSE_S apart: about 10 s in
# all, where gcsfs retries each request 6 times over about a minute.
PROBE_TRIES, PROBE_TIMEOUT_S, PROBE_PAUSE_S = 2, 4.0, 1.0
_reached: set[str] = set()


class UnreachableError(ConnectionError):
  """A bucket URL whose storage service does not answer; the message names the folder."""

  def __init__(self, folder: str | os.PathLike, reason: str):
    self.path = os.fspath(folder)
    super().__init__(f"{self.path}: {reason}; check the network connection (and the bucket's"
                     " name), then rerun the same command")


def check_reachable(p: str | os.PathLike) -> None:
  """Raises UnreachableError, within about 10 s, when ``p`` is a ``gs://`` URL whose storage
  service does not answer. Any HTTP answer counts (a 403 or 404 is gcsfs's to report, with its
  reason); local paths, other schemes and endpoints already reached return at once."""
  url = urllib.parse.urlsplit(os.fspath(p))
  if url.scheme not in ("gs", "gcs"):
    return
  import fsspec

  # gcsfs's own endpoint (STORAGE_EMULATOR_HOST, the universe domain), from the instance that
  # etils.epath uses.
  probe = f"{fsspec.filesystem('gcs', finalize_on_close=True).base}b/{url.netloc}"
  if probe in _reached:
    return
  for attempt in range(PROBE_TRIES):
    if attempt:
      time.sleep(PROBE_PAUSE_S)
    try:
      with urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_S):
        break
    except urllib.error.HTTPError:
      break
    except OSError as e:  # URLError, a timeout, a reset connection.
      reason = getattr(e, "reason", None) or e
  else:
    raise UnreachableError(p, f"the storage service at {probe.split('/storage/')[0]} does not"
                           f" answer ({reason}; {PROBE_TRIES} tries of {PROBE_TIMEOUT_S:.0f} s)")
  _reached.add(probe)


def files_below(folder: str | os.PathLike) -> list[str]:
  """The files below ``folder``, at any depth, as POSIX paths relative to it, sorted part by part
  as pathlib sorts paths (the same list for a local folder and its copy on a bucket).

  A bucket is listed in one paged listing of the objects under the folder's prefix: a walk
  (``epath.Path.walk``) would ask once per folder, a million requests for a PACS export with a
  folder per study."""
  folder = path(folder)
  if is_local(folder):
    found = []
    for dirpath, _, files in os.walk(folder):
      rel = pathlib.Path(dirpath).relative_to(folder)
      found += [(rel / f).as_posix() for f in files]
  else:
    import fsspec

    check_reachable(folder)
    fs, prefix = fsspec.core.url_to_fs(os.fspath(folder))
    prefix = prefix.rstrip("/") + "/"
    found = [name.removeprefix(prefix) for name in fs.find(prefix)
             if name.startswith(prefix) and not name.endswith("/")]
  return sorted(found, key=lambda rel: rel.split("/"))


def upload(src: pathlib.Path, dest: epath.Path) -> None:
  """Copies the files under the local folder ``src`` to ``dest``, replacing what is there."""
  for file in sorted(src.rglob("*")):
    if file.is_file():
      target = dest / file.relative_to(src).as_posix()
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(file.read_bytes())


@contextlib.contextmanager
def staged(folder: str | os.PathLike):
  """A local folder to write ``folder``'s files into: ``folder`` itself when it is local, else
  a temporary one that is uploaded on the way out (also after an error, so what was written is
  kept)."""
  folder = path(folder)
  if is_local(folder):
    out = local(folder)
    out.mkdir(parents=True, exist_ok=True)
    yield out
    return
  check_reachable(folder)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="attend_jax-staged-"))
  try:
    yield tmp
  finally:
    upload(tmp, folder)
    shutil.rmtree(tmp)


class Mirror:
  """A local copy of a remote folder's growing files (TensorBoard events, metrics.jsonl,
  log.txt), uploaded by ``sync``; ``due`` says when ``every_s`` has passed, so that a busy loop
  need not upload at every step. A local folder is its own mirror (``sync`` does nothing).

  Files already in the remote folder are downloaded first when ``resume`` names them, so that
  appending continues them.
  """

  def __init__(self, folder: str | os.PathLike, resume: tuple[str, ...] = (),
               every_s: float = 30.0):
    self.remote = path(folder)
    self.every_s = every_s
    self._last = time.monotonic()
    if is_local(self.remote):
      self.dir = local(self.remote)
      self.dir.mkdir(parents=True, exist_ok=True)
      return
    check_reachable(self.remote)
    key = hashlib.sha1(str(self.remote).encode()).hexdigest()[:12]
    self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"attend_jax-mirror-{key}-"))
    for name in resume:
      if (self.remote / name).exists():
        (self.dir / name).write_bytes((self.remote / name).read_bytes())

  def due(self) -> bool:
    """Whether ``every_s`` has passed since the last upload (always False for a local folder)."""
    return not is_local(self.remote) and time.monotonic() - self._last >= self.every_s

  def sync(self) -> None:
    """Uploads the mirror now."""
    if not is_local(self.remote):
      upload(self.dir, self.remote)
      self._last = time.monotonic()

  def close(self) -> None:
    """A last upload; the local copy of a remote folder is then removed."""
    if not is_local(self.remote):
      self.sync()
      shutil.rmtree(self.dir)
