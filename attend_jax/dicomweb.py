"""A PACS through DICOMweb: find studies (QIDO-RS), fetch their images (WADO-RS) into a folder,
store new DICOM objects (STOW-RS). predict's ``--dicomweb`` is the command-line front end.

  client = dicomweb.connect("https://pacs.example.org/dicom-web")
  files, new = dicomweb.fetch(client, dicomweb.find_studies(client, "ModalitiesInStudy=MG"),
                              folder)
  dicomweb.store(client, objects)

Credentials never travel as flags or in the URL: ``ATTEND_JAX_DICOMWEB_TOKEN`` (an OAuth bearer
token), else ``ATTEND_JAX_DICOMWEB_USER`` and ``ATTEND_JAX_DICOMWEB_PASSWORD`` (HTTP basic), else
the server's entry in a netrc file (``~/.netrc``, or the file ``$NETRC`` names; requests reads
it). TLS certificates are always verified; ``REQUESTS_CA_BUNDLE`` names a hospital's own CA.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

USER_ENV, PASSWORD_ENV = "ATTEND_JAX_DICOMWEB_USER", "ATTEND_JAX_DICOMWEB_PASSWORD"
TOKEN_ENV = "ATTEND_JAX_DICOMWEB_TOKEN"
TIMEOUT_S = 120  # Per request: a large mammogram over a slow hospital link.
# dicomweb_client retries a request that fails (no connection, HTTP 408, 429, 503, 504) with
# exponential back-off; its default, 5 tries over 15 s, keeps a typo'd host waiting. 3 tries,
# 1 s then 2 s apart, still ride out a server's restart or a busy moment.
_TRIES, _BACKOFF_MS = 3, 500
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # DICOM PS3.5 9.1; also what makes a safe file name.
_STORE_BATCH = 16  # Objects per STOW-RS request.
_SOP_UID, _SERIES_UID, _STUDY_UID = "00080018", "0020000E", "0020000D"


class DicomWebError(Exception):
  """A DICOMweb server that cannot be reached, refuses the credentials or a request, or does
  not have what was asked for; the message says which server and what to do."""


class StoreError(DicomWebError):
  """Objects the server did not store: ``not_stored`` lists their files, which stay where they
  are."""

  def __init__(self, message: str, not_stored: Sequence[str]):
    super().__init__(message)
    self.not_stored = list(not_stored)


class Client(DICOMwebClient):
  """A DICOMwebClient that knows where its credentials came from (``credentials``, for
  messages; never the credentials themselves)."""

  def __init__(self, url: str, session: requests.Session, credentials: str):
    super().__init__(url, session=session, timeout=TIMEOUT_S)
    self.set_http_retry_params(max_attempts=_TRIES, wait_exponential_multiplier=_BACKOFF_MS)
    self.credentials = credentials


def connect(url: str) -> Client:
  """A client of the DICOMweb service at ``url`` (e.g. ``http://pacs:8042/dicom-web``), with
  the credentials of the environment (the module's docstring); no request is made yet."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    raise DicomWebError(f"--dicomweb={url}: not an http:// or https:// URL")
  if parts.username or parts.password:
    raise DicomWebError(
        f"--dicomweb: the URL holds credentials; remove them from the URL and set {USER_ENV}"
        f" and {PASSWORD_ENV} (or {TOKEN_ENV}, or a netrc entry for {parts.hostname})")
  session = requests.Session()  # trust_env: netrc, REQUESTS_CA_BUNDLE, proxies.
  token, user = os.environ.get(TOKEN_ENV), os.environ.get(USER_ENV)
  for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
    if any(c in os.environ.get(name, "") for c in "\r\n"):
      raise DicomWebError(f"{name} holds a line break: set it without one")
  if token and user:
    raise DicomWebError(f"both {TOKEN_ENV} and {USER_ENV} are set: unset one")
  if token:
    session.headers["Authorization"] = f"Bearer {token}"
    credentials = f"the token in {TOKEN_ENV}"
  elif user:
    if PASSWORD_ENV not in os.environ:
      raise DicomWebError(f"{USER_ENV} is set but {PASSWORD_ENV} is not")
    session.auth = (user, os.environ[PASSWORD_ENV])
    credentials = f"the user in {USER_ENV} and {PASSWORD_ENV}"
  elif requests.utils.get_netrc_auth(url):
    credentials = f"the netrc entry for {parts.hostname}"
  else:
    credentials = "no credentials"
  return Client(url.rstrip("/"), session, credentials)


def _innermost(e: BaseException) -> str:
  """The root cause of a connection error, as a person reads it ("Connection refused")."""
  while e.__cause__ or e.__context__:
    e = e.__cause__ or e.__context__
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  return text.split(": ", 1)[-1][:200] if text else type(e).__name__


@contextlib.contextmanager
def _errors(client: Client, what: str, not_found: str | None = None) -> Iterator[None]:
  """requests' errors while ``what`` is done, as a DicomWebError a person can act on;
  ``not_found`` is the message for HTTP 404."""
  url = client.base_url
  try:
    yield
  except requests.exceptions.SSLError as e:
    raise DicomWebError(
        f"{what}: the TLS certificate of {url} could not be verified ({_innermost(e)}); if"
        " your hospital signs its servers' certificates with its own CA, set"
        " REQUESTS_CA_BUNDLE to that CA's PEM file") from e
  except requests.exceptions.Timeout as e:
    raise DicomWebError(f"{what}: {url} did not answer within {TIMEOUT_S} s") from e
  except requests.exceptions.ConnectionError as e:
    raise DicomWebError(f"{what}: cannot reach the DICOMweb server {url}: {_innermost(e)}") from e
  except requests.exceptions.HTTPError as e:
    status = e.response.status_code if e.response is not None else 0
    if status == 401:
      raise DicomWebError(
          f"{what}: {url} refused {client.credentials} (HTTP 401 Unauthorized); set {USER_ENV}"
          f" and {PASSWORD_ENV}, or {TOKEN_ENV}, or a netrc entry for the server") from e
    if status == 403:
      raise DicomWebError(f"{what}: {url} does not allow this to {client.credentials}"
                          " (HTTP 403 Forbidden)") from e
    if status == 404 and not_found:
      raise DicomWebError(not_found) from e
    reason = e.response.reason if e.response is not None else str(e)
    raise DicomWebError(f"{what}: {url} answered HTTP {status} {reason}") from e
  except requests.exceptions.RequestException as e:  # Not its text: it may quote a header.
    raise DicomWebError(f"{what}: the request to {url} failed ({type(e).__name__})") from e


def _uid(value: str, what: str) -> str:
  if not (isinstance(value, str) and len(value) <= 64 and _UID.match(value)):
    raise DicomWebError(f"{what} {value!r} is not a DICOM UID (digits and dots)")
  return value


def _value(item: dict, tag: str) -> str:
  return (item.get(tag, {}).get("Value") or [""])[0]


def _search(search: Callable[..., list[dict]], key: str, **kwargs) -> list[dict]:
  """Every result of a QIDO-RS ``search``, page by page (servers cap a page); stops when a page
  brings nothing new: Orthanc 1.10 ignores ``offset`` in a ModalitiesInStudy search, and
  dicomweb_client's get_remaining then asks for ever."""
  results, seen = [], set()
  while True:
    page = [r for r in search(offset=len(results), **kwargs) if _value(r, key) not in seen]
    if not page:
      return results
    results += page
    seen |= {_value(r, key) for r in page}


def find_studies(client: Client, query: str) -> list[str]:
  """The Study Instance UIDs of the studies a QIDO-RS search matches; ``query`` as in a URL:
  ``ModalitiesInStudy=MG&StudyDate=20240101-20241231``."""
  try:
    filters = dict(urllib.parse.parse_qsl(query, strict_parsing=True))
  except ValueError:
    raise DicomWebError(f"--dicomweb_query={query}: not KEY=VALUE&KEY=VALUE (QIDO-RS attributes,"
                        " e.g. ModalitiesInStudy=MG&StudyDate=20240101-20241231)") from None
  with _errors(client, f"searching studies {query}"):
    found = _search(client.search_for_studies, _STUDY_UID, search_filters=filters)
  studies = [_uid(_value(item, _STUDY_UID), "the server returned a study UID") for item in found]
  if not studies:
    raise DicomWebError(f"no study on {client.base_url} matches --dicomweb_query={query}")
  return list(dict.fromkeys(studies))


def _instances(client: Client, study: str) -> list[tuple[str, str]]:
  """(series UID, SOP Instance UID) of every instance of ``study``."""
  missing = f"study {study}: no such study on {client.base_url}"
  with _errors(client, f"listing study {study}", not_found=missing):
    found = _search(client.search_for_instances, _SOP_UID, study_instance_uid=study,
                    fields=["SeriesInstanceUID"])
  return [(_uid(_value(i, _SERIES_UID), "the server returned a series UID"),
           _uid(_value(i, _SOP_UID), "the server returned a SOP Instance UID")) for i in found]


def fetch(client: Client, studies: Sequence[str], folder: str | os.PathLike,
          progress: Callable[[int, int], None] | None = None) -> tuple[list[pathlib.Path], int]:
  """Every instance of ``studies`` as ``folder/<study>/<sop>.dcm``, fetched with WADO-RS in the
  transfer syntax the server holds (no transcoding); files already there are kept, so a rerun
  fetches only what is missing. Returns (the files, how many were fetched now). Every study is
  listed before anything is fetched: a wrong UID stops the fetch at once."""
  folder = pathlib.Path(folder)
  plan = []
  for study in dict.fromkeys(studies):
    _uid(study, "--study")
    found = _instances(client, study)
    if not found:
      raise DicomWebError(f"study {study}: no such study on {client.base_url} (no instances)")
    plan += [(study, series, sop, folder / study / f"{sop}.dcm") for series, sop in found]
  todo = [p for p in plan if not p[3].exists()]
  for done, (study, series, sop, path) in enumerate(todo, start=1):
    with _errors(client, f"fetching {sop} of study {study}",
                 not_found=f"study {study}: instance {sop} is gone from {client.base_url}"):
      dataset = client.retrieve_instance(study, series, sop)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # Not *.dcm: a kill leaves no half file.
    dataset.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)
    if progress:
      progress(done, len(todo))
  return [p[3] for p in plan], len(todo)


def store(client: Client, files: Sequence[str | os.PathLike],
          progress: Callable[[int, int], None] | None = None) -> int:
  """Stores the DICOM ``files`` with STOW-RS and checks with QIDO-RS that the server keeps
  each one (a PACS's routing rules may drop an object it answered as stored). Returns how many
  were stored; raises StoreError naming those that were not (their files are left as they
  are)."""
  files = [pathlib.Path(f) for f in files]
  headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
  by_sop = {str(h.SOPInstanceUID): f for h, f in zip(headers, files)}
  failed: dict[pathlib.Path, str] = {}
  posted: list[int] = []
  for start in range(0, len(files), _STORE_BATCH):
    batch = list(range(start, min(start + _STORE_BATCH, len(files))))
    try:
      with _errors(client, "storing"):
        answer = client.store_instances([pydicom.dcmread(files[i]) for i in batch])
    except DicomWebError as e:
      failed.update({f: str(e) for f in files[start:]})
      break
    for item in answer.get("FailedSOPSequence", []):
      path = by_sop.get(str(item.get("ReferencedSOPInstanceUID", "")))
      if path is not None:
        failed[path] = f"refused (failure reason {item.get('FailureReason', '?')})"
    posted += batch
    if progress:
      progress(len(posted), len(files))
  kept = set()
  for study in dict.fromkeys(str(headers[i].StudyInstanceUID) for i in posted):
    kept |= {sop for _, sop in _instances(client, study)}
  for i in posted:
    if files[i] not in failed and str(headers[i].SOPInstanceUID) not in kept:
      failed[files[i]] = "answered as stored but not kept (the server's rules dropped it)"
  if failed:
    reasons = list(dict.fromkeys(failed.values()))
    names = [str(f) for f in files if f in failed]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    other = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
    raise StoreError(f"{len(names)} of {len(files)} DICOM files were not stored on"
                     f" {client.base_url}: {reasons[0]}{other}; they are kept as they are:"
                     f" {', '.join(names[:3])}{more}", names)
  return len(files)
