"""Source adapters on small fake folder trees in each dataset's exact layout."""

import json
import pathlib

import numpy as np
import pytest

from attend_jax.data import sources
from attend_jax.errors import LabelError
from attend_jax.data.sources import cbis_ddsm, reference_csv, rsna, synthetic_csv, vindr
import helpers

SHARED = helpers.SHARED


def _write(path: pathlib.Path, text: str = ""):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


VINDR_BREAST = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
                "breast_density,split\n")
VINDR_FINDING = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
                 "breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split\n")


def test_vindr_labels_boxes_and_splits(tmp_path):
  rows = []
  for s in range(40):
    birads = "BI-RADS 4" if s % 4 == 0 else "BI-RADS 2"
    split = "test" if s >= 30 else "training"
    for lat in "LR":
      for view in ("CC", "MLO"):
        rows.append(f"st{s},se{s},im{s}{lat}{view},{lat},{view},3000,2400,{birads},DENSITY C,{split}")
  rows.append("st99,se99,bad,L,CC,3000,2400,BI-RADS 7,DENSITY C,training")
  _write(tmp_path / "breast-level_annotations.csv", VINDR_BREAST + "\n".join(rows) + "\n")
  _write(tmp_path / "finding_annotations.csv", VINDR_FINDING
         + "st0,se0,im0LCC,L,CC,3000,2400,BI-RADS 4,DENSITY C,['Mass'],BI-RADS 4,10,20,110,220,training\n"
         + "st0,se0,im0LCC,L,CC,3000,2400,BI-RADS 4,DENSITY C,['Suspicious Calcification'],BI-RADS 4,5,6,7,8,training\n"
         + "st0,se0,im0LCC,L,CC,3000,2400,BI-RADS 4,DENSITY C,['Architectural Distortion'],BI-RADS 4,1,1,9,9,training\n"
         + "st1,se1,im1LCC,L,CC,3000,2400,BI-RADS 2,DENSITY C,['No Finding'],,,,,,training\n")
  listing = vindr.list_examples(tmp_path)
  by_id = {ex.image_id: ex for ex in listing.examples}
  assert len(by_id) == 160
  assert by_id["im0LCC"].label == 1 and by_id["im1LCC"].label == 0
  assert by_id["im0LCC"].lesion_boxes == ((10, 20, 110, 220), (5, 6, 7, 8))
  assert by_id["im1LCC"].lesion_boxes == ()
  assert by_id["im0LCC"].path == str(tmp_path / "images" / "st0" / "im0LCC.dicom")
  assert {ex.split for ex in listing.examples if int(ex.study_id[2:]) >= 30} == {"test"}
  # Validation is split off by study: all four images of a study land together.
  for s in range(30):
    assert len({by_id[f"im{s}{lat}{v}"].split for lat in "LR" for v in ("CC", "MLO")}) == 1
  assert {ex.split for ex in listing.examples} == {"train", "val", "test"}
  assert [e.reason for e in listing.bad] == ["line 162: unknown breast_birads 'BI-RADS 7' (expected BI-RADS 1-5)"]
  assert vindr.list_examples(tmp_path).examples == listing.examples  # Deterministic.


def test_vindr_missing_column_and_missing_dataset(tmp_path):
  _write(tmp_path / "breast-level_annotations.csv", "study_id,image_id,laterality\n")
  with pytest.raises(LabelError, match="missing required column") as e:
    vindr.list_examples(tmp_path)
  assert "breast-level_annotations.csv" in str(e.value)
  with pytest.raises(sources.DatasetNotFoundError, match="physionet") as e:
    vindr.list_examples(tmp_path / "nowhere")
  assert "images/<study_id>/<image_id>.dicom" in str(e.value)


CBIS_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,"
               "abnormality type,calc type,calc distribution,assessment,pathology,subtlety,"
               "image file path,cropped image file path,ROI mask file path\n")


def test_cbis_ddsm_matches_nbia_folders_not_csv_file_names(tmp_path):
  # The CSV's paths use DICOM UIDs; on disk NBIA writes dates and series descriptions.
  top, mask1, mask2 = ("Calc-Training_P_00005_RIGHT_CC", "Calc-Training_P_00005_RIGHT_CC_1",
                       "Calc-Training_P_00005_RIGHT_CC_2")
  base = tmp_path / "CBIS-DDSM"
  _write(base / top / "08-07-2016-DDSM-23157" / "1.000000-full mammogram images-38548" / "1-1.dcm")
  _write(base / mask1 / "09-06-2017-DDSM-NA-09887" / "1.000000-ROI mask images-18744" / "1-1.dcm")
  _write(base / mask1 / "09-06-2017-DDSM-NA-09887" / "1.000000-cropped images-31412" / "1-1.dcm")
  _write(base / mask2 / "09-06-2017-DDSM-NA-11111" / "1.000000-ROI mask images-1" / "1-2.dcm")
  _write(base / "Calc-Test_P_00038_LEFT_MLO" / "x" / "y" / "1-1.dcm")
  rows = [
      f"P_00005,3,RIGHT,CC,1,calcification,AMORPHOUS,CLUSTERED,3,BENIGN,3,{top}/1.3.6.1/1.3.6.2/000000.dcm,{mask1}/1.3/1.4/000000.dcm,{mask1}/1.3/1.4/000001.dcm",
      f"P_00005,3,RIGHT,CC,2,calcification,AMORPHOUS,CLUSTERED,4,MALIGNANT,3,{top}/1.3.6.1/1.3.6.2/000000.dcm,{mask2}/1.3/1.4/000000.dcm,{mask2}/1.3/1.4/000001.dcm",
      "P_00007,3,LEFT,CC,1,calcification,,,3,BENIGN,3,Calc-Training_P_00007_LEFT_CC/1/2/000000.dcm,a/b,c/d",
      "P_00008,3,LEFT,CC,1,calcification,,,3,UNKNOWN,3,x/1/2/000000.dcm,a/b,c/d",
  ]
  _write(tmp_path / "calc_case_description_train_set.csv", CBIS_HEADER + "\n".join(rows) + "\n")
  test_header = CBIS_HEADER.replace("breast density", "breast_density")
  _write(tmp_path / "calc_case_description_test_set.csv", test_header
         + "P_00038,2,LEFT,MLO,1,calcification,,,2,BENIGN_WITHOUT_CALLBACK,2,Calc-Test_P_00038_LEFT_MLO/1/2/000000.dcm,a/b,c/d\n")
  listing = cbis_ddsm.list_examples(tmp_path)
  by_id = {ex.image_id: ex for ex in listing.examples}
  assert set(by_id) == {top, "Calc-Test_P_00038_LEFT_MLO"}
  ex = by_id[top]
  assert ex.label == 1  # Malignant if any of its abnormalities is.
  assert (ex.laterality, ex.view, ex.patient_id) == ("R", "CC", "P_00005")
  assert ex.path.endswith("1.000000-full mammogram images-38548/1-1.dcm")
  assert len(ex.mask_paths) == 3  # Both mask folders; the cropped image is told apart by size.
  assert by_id["Calc-Test_P_00038_LEFT_MLO"].split == "test"
  reasons = sorted(e.reason for e in listing.bad if not isinstance(e, cbis_ddsm.MissingMaskError))
  assert reasons[0].startswith("line 4: no DICOM folder 'Calc-Training_P_00007_LEFT_CC'")
  assert reasons[1].startswith("line 5: unknown pathology 'UNKNOWN'")
  # A row whose ROI mask is not on disk keeps its image, and is listed.
  [missing] = [e for e in listing.bad if isinstance(e, cbis_ddsm.MissingMaskError)]
  assert missing.reason.startswith("line 2: no ROI mask folder 'c'")
  assert "Calc-Test_P_00038_LEFT_MLO is kept without this lesion's box" in missing.reason


def test_rsna_and_label_values(tmp_path):
  lines = ["site_id,patient_id,image_id,laterality,view,age,cancer,biopsy"]
  lines += [f"1,{p},{p}{i},L,{v},60,{int(p == 3)},0" for p in range(50) for i, v in enumerate(("CC", "MLO"))]
  lines.append("1,77,770,L,CC,60,yes,0")
  _write(tmp_path / "train.csv", "\n".join(lines) + "\n")
  listing = rsna.list_examples(tmp_path)
  assert len(listing.examples) == 100
  assert listing.examples[0].path == str(tmp_path / "train_images" / "0" / "00.dcm")
  assert sum(ex.label for ex in listing.examples) == 2
  assert {ex.split for ex in listing.examples} == {"train", "val", "test"}
  assert "cancer must be 0 or 1, got 'yes'" in listing.bad[0].reason


@helpers.needs_shared
def test_reference_csv_with_the_real_vindr_csvs_and_proposals(tmp_path):
  listing = reference_csv.list_examples(tmp_path, csv_dir=SHARED, proposal_dir=SHARED / "proposals")
  counts = {s: sum(ex.split == s for ex in listing.examples) for s in ("train", "val", "test")}
  assert counts == {"train": 12800, "val": 3200, "test": 4000}
  assert sum(ex.label for ex in listing.examples if ex.split == "test") == 198
  with_files = [ex for ex in listing.examples if pathlib.Path(ex.proposals_path).exists()]
  assert len(with_files) == 128 and {ex.split for ex in with_files} == {"test"}
  ex = with_files[0]
  assert ex.path == str(tmp_path / ex.study_id / f"{ex.image_id}.dicom")


def test_synthetic_labels_csv(tmp_path):
  lesions = json.dumps([{"box": [1, 2, 30, 40], "kind": "spiculated_mass"}])
  _write(tmp_path / "labels.csv",
         "image_id,study_id,patient_id,laterality,view,label,path,lesions\n"
         f"a,s1,p1,L,CC,1,images/s1/a.dcm,\"{lesions.replace(chr(34), chr(34) * 2)}\"\n"
         "b,s1,p1,L,MLO,0,images/s1/b.dcm,[]\n")
  listing = synthetic_csv.list_examples(tmp_path)
  assert [ex.lesion_boxes for ex in listing.examples] == [((1, 2, 30, 40),), ()]
  assert [ex.proposal_boxes for ex in listing.examples] == [(), ()]  # No image size given.
  assert listing.examples[0].split == listing.examples[1].split


def test_simulated_detector_finds_every_lesion_and_hides_the_label_in_count_and_size():
  from attend_jax.data import synthetic

  lesion = (300, 400, 360, 470)
  with_lesion = synthetic.simulate_detector([lesion], 800, 1000, "R", count=6, key="a")
  without = synthetic.simulate_detector([], 800, 1000, "L", count=6, key="b")
  assert with_lesion.shape == without.shape == (6, 5)
  assert np.all(np.diff(with_lesion[:, 4]) <= 0)  # Sorted by score.
  # The lesion's box is there: it overlaps the lesion by more than half.
  x0, y0 = np.maximum(with_lesion[:, 0], lesion[0]), np.maximum(with_lesion[:, 1], lesion[1])
  x1, y1 = np.minimum(with_lesion[:, 2], lesion[2]), np.minimum(with_lesion[:, 3], lesion[3])
  cover = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None) / (60 * 70)
  assert cover.max() > 0.5
  # False positives sit inside the image, on the breast's side (L breasts are on the right).
  assert np.all(without[:, [0, 2]] >= 0) and np.all(without[:, [0, 2]] <= 800)
  assert np.all((without[:, 0] + without[:, 2]) / 2 > 800 * 0.4)
  np.testing.assert_array_equal(
      synthetic.simulate_detector([], 800, 1000, "L", count=6, key="b"), without)  # Seeded.
