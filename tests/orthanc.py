"""A real PACS for the tests: Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) with
its DICOMweb plugin, on a free 127.0.0.1 port, its storage in a temp folder.

``start(folder)`` starts one (about 0.1 s) and returns a ``Server``; ``stop(server)`` ends it.
The session fixtures ``orthanc`` and ``orthanc_auth`` in conftest.py call them; ``tls_front``
puts HTTPS with a certificate of its own in front of one. The Makefile's test target
installs the packages; without them the fixtures fail, saying how to install them, unless
``ATTEND_JAX_SKIP_ORTHANC=1`` (a machine without root) makes them skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

BINARY = pathlib.Path("/usr/sbin/Orthanc")
PLUGIN = pathlib.Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SKIP_ENV = "ATTEND_JAX_SKIP_ORTHANC"
# The server is killed when the test process dies, however it dies (a killed pytest skips the
# fixtures' teardown): util-linux's setpriv sets the parent-death signal, then runs Orthanc.
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()
# The account of the authenticated server that may read but not store: Orthanc 1.10 has no
# per-user rights of its own, so a Lua filter refuses its writes (HTTP 403), as a PACS does for
# a read-only account.
READER = "reader"
# Refuses every write by READER and, with a token, every request without it (Orthanc 1.10 knows
# only HTTP basic authentication itself); keeps no instance whose series description starts
# with "REFUSED", as a PACS's routing rules drop objects it does not take: STOW-RS still answers
# 200 and lists the instance as stored (Orthanc 1.10, DICOMweb plugin 1.7).
_LUA = """
TOKEN = '%s'

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if TOKEN ~= '' and httpHeaders['authorization'] ~= 'Bearer ' .. TOKEN then
    return false
  end
  return not (username == '%s' and method ~= 'GET')
end

function ReceivedInstanceFilter(dicom, origin, info)
  return string.sub(dicom.SeriesDescription or '', 1, 7) ~= 'REFUSED'
end
"""


@dataclasses.dataclass
class Server:
  """A running Orthanc: ``url`` its root, ``dicomweb`` its DICOMweb root; ``users`` maps each
  account to its password (empty without authentication); ``token``: the bearer token it
  requires, if any."""

  url: str
  process: subprocess.Popen
  folder: pathlib.Path
  users: dict[str, str]
  token: str | None = None

  @property
  def dicomweb(self) -> str:
    return f"{self.url}/dicom-web"

  def client(self, user: str | None = None):
    """A dicomweb_client of the tests' own (uploads, checks), as ``user`` (default: the first
    account, if any)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.trust_env = False  # Not the netrc a test writes.
    user = user or next(iter(self.users), None)
    if user:
      session.auth = (user, self.users[user])
    if self.token:
      session.headers["Authorization"] = f"Bearer {self.token}"
    return DICOMwebClient(self.dicomweb, session=session)


def available() -> str | None:
  """Why Orthanc cannot run here, or None."""
  for path, package in ((BINARY, "orthanc"), (PLUGIN, "orthanc-dicomweb")):
    if not path.exists():
      return (f"{path} is missing: install Orthanc (as root: apt-get install orthanc"
              f" orthanc-dicomweb; `make test` does), or set {SKIP_ENV}=1 to skip the DICOMweb"
              f" tests (package {package})")
  return None


def require() -> None:
  """Fails the calling test when Orthanc is not installed, or skips it if ``SKIP_ENV`` says
  so: in CI the DICOMweb tests must run."""
  import pytest

  reason = available()
  if reason is None:
    return
  if os.environ.get(SKIP_ENV) == "1":
    pytest.skip(reason)
  pytest.fail(reason, pytrace=False)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _certificate(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """A self-signed certificate for 127.0.0.1: (the certificate, certificate + key)."""
  import datetime
  import ipaddress

  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import rsa
  from cryptography.x509.oid import NameOID

  key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attend_jax test PACS")])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName(
              [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
  pem = cert.public_bytes(serialization.Encoding.PEM)
  (folder / "ca.pem").write_bytes(pem)
  (folder / "tls.pem").write_bytes(pem + key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
      serialization.NoEncryption()))
  return folder / "ca.pem", folder / "tls.pem"


def start(folder: pathlib.Path, users: dict[str, str] | None = None,
          token: str | None = None) -> Server:
  """Orthanc with DICOMweb at ``http://127.0.0.1:PORT/dicom-web``, storing in ``folder``; with
  ``users`` (account -> password), HTTP basic authentication is on, and ``READER`` (if among
  them) may only read; with ``token``, each request must carry it as a bearer token."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "filters.lua").write_text(_LUA % (token or "", READER))
  config = {
      "Name": "attend_jax-test", "StorageDirectory": str(folder / "db"),
      "IndexDirectory": str(folder / "db"), "HttpPort": 0, "DicomServerEnabled": False,
      "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users),
      "RegisteredUsers": users or {}, "Plugins": [str(PLUGIN)],
      "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
      "LuaScripts": [str(folder / "filters.lua")], "SaveJobs": False, "HttpThreads": 8,
      "HttpTimeout": 30, "StorageCompression": False,
  }
  log = open(folder / "orthanc.log", "wb")
  for _ in range(5):  # Another process may take the free port first.
    config["HttpPort"] = port = _free_port()
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    process = subprocess.Popen([*_DIE_WITH_PARENT, str(BINARY), str(folder / "orthanc.json")],
                               stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    if _wait(url, process, users, token):
      log.close()
      return Server(url, process, folder, dict(users or {}), token)
    stop(Server(url, process, folder, {}))
  log.close()
  raise RuntimeError("Orthanc did not start: "
                     + (folder / "orthanc.log").read_text(errors="replace")[-2000:])


def _wait(url: str, process: subprocess.Popen, users: dict[str, str] | None,
          token: str | None) -> bool:
  """Whether ``/system`` answers before the process ends (or 60 s pass)."""
  request = urllib.request.Request(f"{url}/system")
  if token:
    request.add_header("Authorization", f"Bearer {token}")
  if users:
    import base64

    user, password = next(iter(users.items()))
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {basic}")
  deadline = time.monotonic() + 60
  while process.poll() is None and time.monotonic() < deadline:
    try:
      with urllib.request.urlopen(request, timeout=5) as response:
        return response.status == 200
    except (urllib.error.URLError, ConnectionError):
      time.sleep(0.05)
  return False


def stop(server: Server) -> None:
  """Ends the server. Killed, not asked to stop: a clean stop waits about 2.5 s for its HTTP
  threads, and its storage is thrown away with the temp folder anyway."""
  server.process.kill()
  server.process.wait(timeout=30)


@contextlib.contextmanager
def tls_front(server: Server, folder: pathlib.Path):
  """An HTTPS front for ``server``'s GET requests, with a self-signed certificate for
  127.0.0.1: yields (its DICOMweb URL, the certificate clients must trust). Orthanc's own TLS
  (``SslEnabled``) is not used: the Debian build of 1.10.1 crashes (SIGSEGV) on its first HTTPS
  request here, in civetweb under OpenSSL 3."""
  import http.server
  import threading

  ca, both = _certificate(folder)

  class Forward(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's name)
      request = urllib.request.Request(server.url + self.path, headers={
          k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")})
      try:
        with urllib.request.urlopen(request, timeout=30) as response:
          status, body, kind = response.status, response.read(), response.headers["Content-Type"]
      except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers.get("Content-Type", "text/plain")
      self.send_response(status)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(both)
  front.socket = context.wrap_socket(front.socket, server_side=True)
  thread = threading.Thread(target=front.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"https://127.0.0.1:{front.server_address[1]}/dicom-web", ca
  finally:
    front.shutdown()
    front.server_close()
