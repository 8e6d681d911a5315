"""A PACS in the loop: a real Orthanc with its DICOMweb plugin (tests/orthanc.py), the synthetic
studies stored in it, attend_jax.dicomweb's fetch and store against it, and predict --dicomweb.
"""

import csv
import pathlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from attend_jax import dicomweb

import helpers
import orthanc as orthanc_server

_CREDENTIAL_ENVS = (dicomweb.USER_ENV, dicomweb.PASSWORD_ENV, dicomweb.TOKEN_ENV, "NETRC")


@pytest.fixture(autouse=True)
def _no_credentials_of_the_caller(monkeypatch):
  """Only the credentials a test sets, here and in its children: none of the machine's (a
  developer's ~/.netrc: requests reads only the file NETRC names, when it is set)."""
  for name in _CREDENTIAL_ENVS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("NETRC", "/nonexistent/netrc")


@pytest.fixture(scope="module")
def studies(trained_classifier):
  """The trained classifier's six synthetic studies: Study Instance UID -> its local files."""
  out = {}
  for path in sorted((trained_classifier / "dicom" / "images").rglob("*.dcm")):
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    out.setdefault(uid, []).append(path)
  assert len(out) == 6
  return out


def test_without_orthanc_the_tests_fail_unless_told_to_skip(monkeypatch, tmp_path):
  """CI must run the DICOMweb tests: a machine without Orthanc fails them, saying how to install
  it, unless ATTEND_JAX_SKIP_ORTHANC=1 skips them."""
  monkeypatch.setattr(orthanc_server, "BINARY", tmp_path / "Orthanc")
  monkeypatch.delenv(orthanc_server.SKIP_ENV, raising=False)
  with pytest.raises(pytest.fail.Exception, match="apt-get install orthanc orthanc-dicomweb"):
    orthanc_server.require()
  monkeypatch.setenv(orthanc_server.SKIP_ENV, "1")
  with pytest.raises(pytest.skip.Exception, match="is missing"):
    orthanc_server.require()


def _upload(server, files):
  answer = server.client().store_instances([pydicom.dcmread(f) for f in files])
  assert len(answer.ReferencedSOPSequence) == len(files)


@pytest.fixture(scope="module")
def pacs(orthanc, studies):
  """The plain Orthanc, holding the six studies."""
  _upload(orthanc, [f for files in studies.values() for f in files])
  return orthanc


def _sops(server, study, user=None) -> set[str]:
  return {i["00080018"]["Value"][0] for i in
          server.client(user).search_for_instances(study_instance_uid=study)}


def test_fetch_brings_each_image_as_stored_once_and_a_query_finds_studies(pacs, studies,
                                                                         tmp_path):
  client = dicomweb.connect(pacs.dicomweb)
  patient = str(pydicom.dcmread(next(iter(studies.values()))[0]).PatientID)
  wanted = {uid for uid, files in studies.items()
            if str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID) == patient}
  found = dicomweb.find_studies(client, f"PatientID={patient}&ModalitiesInStudy=MG")
  assert set(found) == wanted and len(found) < len(studies)
  assert set(dicomweb.find_studies(client, "ModalitiesInStudy=MG")) == set(studies)

  two = sorted(studies)[:2]
  calls = []
  files, new = dicomweb.fetch(client, two, tmp_path, progress=lambda d, t: calls.append((d, t)))
  assert new == len(files) == sum(len(studies[s]) for s in two) and calls[-1] == (new, new)
  local = {str(pydicom.dcmread(f).SOPInstanceUID): f for s in two for f in studies[s]}
  assert {f.relative_to(tmp_path).as_posix() for f in files} == {
      f"{pydicom.dcmread(f).StudyInstanceUID}/{sop}.dcm" for sop, f in local.items()}
  for path in files:
    got, want = pydicom.dcmread(path), pydicom.dcmread(local[path.stem])
    # The transfer syntax the archive holds (JPEG 2000 among them), not a transcoded copy.
    assert got.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(got.pixel_array, want.pixel_array)
  stamps = {f: f.stat().st_mtime_ns for f in files}
  again, new = dicomweb.fetch(client, two, tmp_path)
  assert new == 0 and again == files and {f: f.stat().st_mtime_ns for f in files} == stamps


def _copy(path, folder, series_description="attend_jax test", series=None):
  """``path`` as a new object of its study: new SOP Instance UID, in series ``series``."""
  ds = pydicom.dcmread(path)
  ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
  ds.SeriesInstanceUID = series or generate_uid()
  ds.SeriesDescription = series_description
  out = folder / f"{ds.SOPInstanceUID}.dcm"
  ds.save_as(out, enforce_file_format=True)
  return out


def test_store_puts_new_objects_in_their_study_and_names_those_the_server_drops(pacs, studies,
                                                                               tmp_path):
  client = dicomweb.connect(pacs.dicomweb)
  study, images = sorted(studies.items())[0]
  series = generate_uid()
  new = [_copy(f, tmp_path, series=series) for f in images[:2]]
  calls = []
  assert dicomweb.store(client, new, progress=lambda d, t: calls.append((d, t))) == 2
  assert calls[-1] == (2, 2)
  found = pacs.client().search_for_instances(study_instance_uid=study,
                                             search_filters={"SeriesInstanceUID": series})
  assert {i["00080018"]["Value"][0] for i in found} == {f.stem for f in new}

  # The server's rules drop one (tests/orthanc.py): STOW-RS answers "stored", QIDO tells.
  dropped = _copy(images[2], tmp_path, series_description="REFUSED by routing")
  kept = _copy(images[3], tmp_path)
  with pytest.raises(dicomweb.StoreError) as e:
    dicomweb.store(client, [kept, dropped])
  assert e.value.not_stored == [str(dropped)] and dropped.exists()
  assert "1 of 2 DICOM files were not stored" in str(e.value) and "\n" not in str(e.value)
  assert "dropped" in str(e.value) and str(dropped) in str(e.value)
  assert kept.stem in _sops(pacs, study) and dropped.stem not in _sops(pacs, study)


def test_a_wrong_url_study_or_query_is_one_clear_line(pacs, studies, tmp_path):
  import socket

  with socket.socket() as s:  # A port nobody listens on.
    s.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"
  study = sorted(studies)[0]
  with pytest.raises(dicomweb.DicomWebError, match="cannot reach the DICOMweb server .*: "
                     "Connection refused$"):
    dicomweb.fetch(dicomweb.connect(closed), [study], tmp_path)
  client = dicomweb.connect(pacs.dicomweb)
  unknown = generate_uid()
  with pytest.raises(dicomweb.DicomWebError, match=f"^study {unknown}: no such study on"):
    dicomweb.fetch(client, [study, unknown], tmp_path)
  assert not list(tmp_path.iterdir())  # Every study is listed before anything is fetched.
  with pytest.raises(dicomweb.DicomWebError, match="is not a DICOM UID"):
    dicomweb.fetch(client, ["../../etc"], tmp_path)
  with pytest.raises(dicomweb.DicomWebError, match="matches --dicomweb_query=PatientID=nobody"):
    dicomweb.find_studies(client, "PatientID=nobody")
  with pytest.raises(dicomweb.DicomWebError, match="not KEY=VALUE"):
    dicomweb.find_studies(client, "ModalitiesInStudy")
  with pytest.raises(dicomweb.DicomWebError, match="the URL holds credentials"):
    dicomweb.connect("http://user:secret@127.0.0.1/dicom-web")


@pytest.fixture(scope="module")
def pacs_auth(orthanc_auth, studies):
  """The Orthanc with authentication, holding the six studies."""
  _upload(orthanc_auth, [f for files in studies.values() for f in files])
  return orthanc_auth


def test_credentials_from_the_environment_or_netrc(pacs_auth, studies, tmp_path, monkeypatch):
  user, password = next(iter(pacs_auth.users.items()))
  study = sorted(studies)[0]
  with pytest.raises(dicomweb.DicomWebError, match=r"refused no credentials \(HTTP 401"):
    dicomweb.fetch(dicomweb.connect(pacs_auth.dicomweb), [study], tmp_path)
  monkeypatch.setenv(dicomweb.USER_ENV, user)
  monkeypatch.setenv(dicomweb.PASSWORD_ENV, "wrong-" + password)
  with pytest.raises(dicomweb.DicomWebError, match=f"refused the user in {dicomweb.USER_ENV}"
                     ) as e:
    dicomweb.fetch(dicomweb.connect(pacs_auth.dicomweb), [study], tmp_path)
  assert password not in str(e.value) and "\n" not in str(e.value)
  monkeypatch.setenv(dicomweb.PASSWORD_ENV, password)
  files, _ = dicomweb.fetch(dicomweb.connect(pacs_auth.dicomweb), [study], tmp_path / "env")
  assert len(files) == len(studies[study])

  monkeypatch.delenv(dicomweb.USER_ENV)
  monkeypatch.delenv(dicomweb.PASSWORD_ENV)
  netrc = tmp_path / "netrc"
  netrc.write_text(f"machine 127.0.0.1 login {user} password {password}\n")
  monkeypatch.setenv("NETRC", str(netrc))
  client = dicomweb.connect(pacs_auth.dicomweb)
  assert client.credentials == "the netrc entry for 127.0.0.1"
  files, _ = dicomweb.fetch(client, [study], tmp_path / "netrc-fetched")
  assert len(files) == len(studies[study])

  # A read-only account: the store is refused, and the files stay.
  netrc.write_text(f"machine 127.0.0.1 login {orthanc_server.READER} password"
                   f" {pacs_auth.users[orthanc_server.READER]}\n")
  new = _copy(studies[study][0], tmp_path)
  with pytest.raises(dicomweb.StoreError, match=r"HTTP 403 Forbidden") as e:
    dicomweb.store(dicomweb.connect(pacs_auth.dicomweb), [new])
  assert e.value.not_stored == [str(new)] and new.exists()


def test_a_bearer_token_from_the_environment(studies, tmp_path, monkeypatch):
  orthanc_server.require()
  server = orthanc_server.start(tmp_path / "orthanc", token="t0ken-of-the-day")
  try:
    _upload(server, studies[sorted(studies)[0]])
    monkeypatch.setenv(dicomweb.TOKEN_ENV, "pasted-\ntoken")  # No header injection.
    with pytest.raises(dicomweb.DicomWebError, match="holds a line break") as e:
      dicomweb.connect(server.dicomweb)
    assert "pasted" not in str(e.value)
    monkeypatch.setenv(dicomweb.TOKEN_ENV, "stale-token")
    with pytest.raises(dicomweb.DicomWebError, match=f"the token in {dicomweb.TOKEN_ENV}"):
      dicomweb.find_studies(dicomweb.connect(server.dicomweb), "ModalitiesInStudy=MG")
    monkeypatch.setenv(dicomweb.TOKEN_ENV, server.token)
    assert dicomweb.find_studies(dicomweb.connect(server.dicomweb), "ModalitiesInStudy=MG") == [
        sorted(studies)[0]]
  finally:
    orthanc_server.stop(server)


def test_tls_certificates_are_verified_and_a_hospital_ca_is_trusted(pacs, studies, tmp_path,
                                                                    monkeypatch):
  monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
  monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
  with orthanc_server.tls_front(pacs, tmp_path) as (url, ca):
    with pytest.raises(dicomweb.DicomWebError, match="TLS certificate of https://127.0.0.1:.*"
                       "could not be verified .*set REQUESTS_CA_BUNDLE"):
      dicomweb.find_studies(dicomweb.connect(url), "ModalitiesInStudy=MG")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    assert set(dicomweb.find_studies(dicomweb.connect(url), "ModalitiesInStudy=MG")) == set(
        studies)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _predict(run, out, *args, **env):
  return helpers.run("-m", "attend_jax.predict", f"--workdir={run / 'work'}", f"--out={out}",
                     "--batch_size=4", *args, extra_env=env)


def _one_error_line(proc) -> str:
  """The run's error: exit code 1, one ``error:`` line last on stderr, no traceback."""
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[-1]


def _files_text(folder: pathlib.Path) -> str:
  return "".join(p.read_bytes().decode(errors="replace") for p in folder.rglob("*")
                 if p.is_file())


def _references(ds) -> set[str]:
  """The SOP Instance UIDs of the images a GSPS or an SR references."""
  if ds.Modality == "PR":
    return {str(i.ReferencedSOPInstanceUID) for s in ds.ReferencedSeriesSequence
            for i in s.ReferencedImageSequence}
  return {str(i.ReferencedSOPInstanceUID) for st in ds.CurrentRequestedProcedureEvidenceSequence
          for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}


@pytest.mark.slow
def test_a_study_goes_from_the_pacs_through_predict_and_back_as_gsps_and_sr(
    trained_classifier, pacs_auth, studies, tmp_path):
  """Two studies fetched with a read-only account from the environment: predicted as the
  trainer's own evaluation of the same local files, and the store refused, in one line, with
  everything kept. Then the whole archive, by a QIDO query with the netrc of an account that
  may store: only the rest is fetched and predicted, and every GSPS and SR is stored, each in
  its study, referencing its images. A third run stores nothing twice."""
  run = trained_classifier
  user, password = next(iter(pacs_auth.users.items()))
  reader_password = pacs_auth.users[orthanc_server.READER]
  evaluated = {r["image_id"]: float(r["probability"])
               for r in _rows(run / "work" / "eval" / "predictions.csv")}
  sop_of = {f.stem: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for files in studies.values() for f in files}
  tested = {uid for uid, files in studies.items() if files[0].stem in evaluated}
  two = sorted(tested)[:1] + sorted(set(studies) - tested)[:1]
  out, dicom = tmp_path / "out", tmp_path / "dicom"
  store = (f"--dicomweb={pacs_auth.dicomweb}", f"--dicom_out={dicom}", "--dicomweb_store")
  proc = _predict(run, out, *store, *(f"--study={s}" for s in two),
                  **{dicomweb.USER_ENV: orthanc_server.READER,
                     dicomweb.PASSWORD_ENV: reader_password})
  line = _one_error_line(proc)
  assert "10 of 10 DICOM files were not stored on" in line
  assert "HTTP 403 Forbidden" in line and "they are kept as they are" in line
  assert f"2 studies from {pacs_auth.dicomweb}: 8 images, 8 fetched now" in proc.stdout + (
      proc.stderr)
  rows = _rows(out / "predictions.csv")  # Written before the store.
  assert len(rows) == 8 and all(
      pathlib.Path(r["path"]).parent.parent == out / "fetched" for r in rows)
  by_sop = {r["image_id"]: float(r["probability"]) for r in rows}
  compared = {stem: p for stem, p in evaluated.items() if sop_of[stem] in by_sop}
  assert len(compared) == 4 and all(by_sop[sop_of[stem]] == pytest.approx(p, abs=1e-5)
                                    for stem, p in compared.items())
  assert len(list(dicom.rglob("*.dcm"))) == 10  # 8 GSPS, 2 SR: kept.
  assert not any(_sops(pacs_auth, s) - set(sop_of.values()) for s in studies)
  stamps = {p: p.stat().st_mtime_ns for p in (out / "fetched").rglob("*.dcm")}

  netrc = tmp_path / "netrc"
  netrc.write_text(f"machine 127.0.0.1 login {user} password {password}\n")
  proc = _predict(run, out, *store, "--dicomweb_query=ModalitiesInStudy=MG", NETRC=str(netrc))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "6 studies" in proc.stderr and "24 images, 16 fetched now" in proc.stderr
  assert "resuming: 8 of the 24 files" in proc.stderr
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # Not fetched again.
  assert {r["image_id"] for r in _rows(out / "predictions.csv")} == set(sop_of.values())
  assert "30 DICOM objects stored on" in proc.stderr
  written = {r["sop_instance_uid"]: r for r in _rows(dicom / "dicom_out.csv")}
  assert len(written) == 30
  client = pacs_auth.client(user)
  for study, files in studies.items():
    images = {sop_of[f.stem] for f in files}
    new = _sops(pacs_auth, study) - set(sop_of.values())
    assert new == {sop for sop, r in written.items() if r["study_instance_uid"] == study}
    kinds = []
    for sop in new:  # Back from the PACS (WADO-RS), as a viewer gets them.
      series = client.search_for_instances(study_instance_uid=study,
                                           search_filters={"SOPInstanceUID": sop})
      ds = client.retrieve_instance(study, series[0]["0020000E"]["Value"][0], sop)
      kinds.append(str(ds.Modality))
      assert str(ds.StudyInstanceUID) == study
      refs = _references(ds)
      assert refs == images if ds.Modality == "SR" else len(refs) == 1 and refs <= images
    assert sorted(kinds) == ["PR"] * 4 + ["SR"]
  everything = proc.stdout + proc.stderr + _files_text(out) + _files_text(dicom)
  assert password not in everything and reader_password not in everything

  proc = _predict(run, out, *store, "--dicomweb_query=ModalitiesInStudy=MG", NETRC=str(netrc))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "0 DICOM objects stored on" in proc.stderr and "30 of --dicom_out's" in proc.stderr
  assert sum(len(_sops(pacs_auth, s)) for s in studies) == 24 + 30


@pytest.mark.slow
def test_predict_says_in_one_line_what_is_wrong_with_the_pacs(trained_classifier, pacs_auth,
                                                              studies, tmp_path):
  """An unreachable server and a wrong password; every other DicomWebError (a wrong study UID,
  a refused store: the tests above) takes the same way out."""
  import socket

  run, study = trained_classifier, sorted(studies)[0]
  user, password = next(iter(pacs_auth.users.items()))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"
  line = _one_error_line(_predict(run, tmp_path / "a", f"--dicomweb={closed}", f"--study={study}"))
  assert f"cannot reach the DICOMweb server {closed}: Connection refused" in line

  wrong = {dicomweb.USER_ENV: user, dicomweb.PASSWORD_ENV: "not-" + password}
  proc = _predict(run, tmp_path / "b", f"--dicomweb={pacs_auth.dicomweb}", f"--study={study}",
                  **wrong)
  line = _one_error_line(proc)
  assert "HTTP 401 Unauthorized" in line and dicomweb.USER_ENV in line
  assert password not in proc.stdout + proc.stderr + _files_text(tmp_path / "b")

