"""Reads DICOM mammograms and turns them into model-ready single-channel images.

Two steps, kept apart so each can be tested on its own:

* `read_dicom` decodes the pixel data (compressed transfer syntaxes through the
  pylibjpeg plugins of the `dicom` extra), applies the modality LUT / rescale and
  the VOI LUT or window, and inverts MONOCHROME1 so that dense tissue is always
  bright. It never touches the network.
* `preprocess` mirrors right breasts so every chest wall is on the left, crops the
  breast (largest bright connected component), optionally applies CLAHE, resizes
  and quantises to the configured bit depth.

Every failure raises a subclass of `DicomError` (itself a `ValueError`) whose
message names the file and the cause, so a conversion can skip the file and
report why.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from typing import Sequence

import numpy as np

DEFAULT_MODALITIES = ("MG",)
# Photometric interpretations a grey-level mammogram can have.
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# The breast mask is found on a copy whose longer side is at most this many
# pixels: a 4.5k x 2.8k mammogram would make labelling ~50x slower for no gain.
_MASK_SIDE = 512

# Which pip packages provide a decoder, by transfer syntax UID prefix/value.
_PLUGIN_HINTS = (
    (("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
      "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
     "pylibjpeg and pylibjpeg-openjpeg"),
    (("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
      "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
     "pylibjpeg and pylibjpeg-libjpeg"),
    (("1.2.840.10008.1.2.5",), "pylibjpeg and pylibjpeg-rle"),
)


class DicomError(ValueError):
  """A DICOM file that cannot become a mammogram record; names the file and cause."""

  def __init__(self, path, cause: str):
    self.path = os.fspath(path)
    self.cause = cause
    super().__init__(f"{self.path}: {cause}")


class MissingFileError(DicomError):
  """The file does not exist."""


class NotDicomError(DicomError):
  """The file is not a DICOM file (no DICM preamble and no parseable dataset)."""


class CorruptDicomError(DicomError):
  """The file is DICOM but its header or its pixel data cannot be parsed."""


class NoPixelDataError(DicomError):
  """The dataset has no image (e.g. an RT plan or a structured report)."""


class UnsupportedCompressionError(DicomError):
  """No pixel data decoder is installed (or exists) for the transfer syntax."""


class TruncatedPixelDataError(DicomError):
  """The file ends before the pixel data does."""


class MultiFrameError(DicomError):
  """More than one frame: mammograms here are single 2D images."""


class WrongModalityError(DicomError):
  """The Modality tag is not one of the allowed modalities."""


class UnsupportedPhotometricError(DicomError):
  """Colour or palette images: only MONOCHROME1/2 are mammograms."""


class EmptyImageError(DicomError):
  """The image has no contrast, so no breast region can be found."""


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """How a decoded mammogram becomes a stored record.

  Attributes:
    image_size: output height and width in pixels.
    resize: "pad" keeps the aspect ratio and pads to a square (chest wall
      stays on the left edge, the image is centred vertically); "stretch" is the
      seed's plain resize to image_size x image_size.
    bit_depth: 8 (uint8), 12 (uint16 holding 0..4095) or 16 (uint16).
    orientation: "laterality" mirrors right breasts using the table's or the
      DICOM's laterality and falls back to the image content when neither says;
      "content" always decides from which side holds more tissue; "none" keeps
      the stored orientation.
    crop_breast: crop to the bounding box of the breast (largest bright
      connected component). Off for ROI crops, which are already cropped.
    mask_background: zero everything outside the breast component, which
      removes film labels and scanner borders that survive the crop.
    threshold: breast/background threshold as a fraction of the intensity
      range of the (downsampled) image.
    clahe: apply contrast-limited adaptive histogram equalisation.
    clahe_clip_limit: skimage's clip_limit (0..1).
    clahe_kernel_fraction: CLAHE tile size as a fraction of the image side.
    apply_voi: apply the VOI LUT / window centre-width when reading.
  """

  image_size: int = 384
  resize: str = "pad"
  bit_depth: int = 16
  orientation: str = "laterality"
  crop_breast: bool = True
  mask_background: bool = True
  threshold: float = 0.05
  clahe: bool = False
  clahe_clip_limit: float = 0.01
  clahe_kernel_fraction: float = 0.125
  apply_voi: bool = True

  def __post_init__(self):
    if self.image_size < 8:
      raise ValueError(f"PreprocessOptions.image_size: {self.image_size} is below 8 pixels")
    if self.resize not in ("pad", "stretch"):
      raise ValueError(f"PreprocessOptions.resize: {self.resize!r} is not 'pad' or 'stretch'")
    if self.bit_depth not in (8, 12, 16):
      raise ValueError(f"PreprocessOptions.bit_depth: {self.bit_depth} is not 8, 12 or 16")
    if self.orientation not in ("laterality", "content", "none"):
      raise ValueError(f"PreprocessOptions.orientation: {self.orientation!r} is not "
                       "'laterality', 'content' or 'none'")
    if not 0.0 <= self.threshold < 1.0:
      raise ValueError(f"PreprocessOptions.threshold: {self.threshold} is outside [0, 1)")
    if not 0.0 < self.clahe_clip_limit <= 1.0:
      raise ValueError(f"PreprocessOptions.clahe_clip_limit: {self.clahe_clip_limit} is "
                       "outside (0, 1]")
    if not 0.0 < self.clahe_kernel_fraction <= 1.0:
      raise ValueError(f"PreprocessOptions.clahe_kernel_fraction: "
                       f"{self.clahe_kernel_fraction} is outside (0, 1]")

  @property
  def dtype(self) -> np.dtype:
    """uint8 for 8-bit output, uint16 for 12- and 16-bit output."""
    return np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)

  @property
  def max_value(self) -> int:
    """The brightest stored value, 2**bit_depth - 1."""
    return 2 ** self.bit_depth - 1

  def fingerprint(self) -> str:
    """A short stable hash of all options; names caches so a change invalidates them."""
    text = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def read_dicom(path, allowed_modalities: Sequence[str] | None = DEFAULT_MODALITIES, *,
               apply_voi: bool = True):
  """Decodes one single-frame grey-level DICOM image.

  Args:
    path: the DICOM file.
    allowed_modalities: accepted values of the Modality tag; None accepts any.
    apply_voi: apply the VOI LUT, or else the first window centre/width, after
      the modality LUT / rescale.

  Returns:
    (pixels, metadata): pixels is float32 [H, W] after the LUTs, with
    MONOCHROME1 inverted so that higher always means denser; metadata has
    patient_id, study_id, image_id (SOPInstanceUID), laterality ("L", "R" or
    ""), view, bits_stored, photometric, modality and transfer_syntax.

  Raises:
    DicomError: a subclass naming the file and the cause.
  """
  from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  ds, hit_eof = _read_dataset(path)
  if hit_eof:
    # Checked first: pydicom may drop every element of a file cut inside an
    # encapsulated Pixel Data element, which would otherwise look like a
    # missing Modality.
    raise TruncatedPixelDataError(
        path, f"the file ends before its pixel data does ({os.path.getsize(path)} bytes)")
  if len(ds) == 0:
    raise CorruptDicomError(path, "no data elements after the file meta information "
                            f"(truncated or empty header, {os.path.getsize(path)} bytes)")
  _check_modality(ds, path, allowed_modalities)
  _check_image(ds, path)
  transfer_syntax = _transfer_syntax(ds)
  _check_decoder(transfer_syntax, path)
  _check_native_length(ds, path, transfer_syntax)
  try:
    raw = ds.pixel_array
  except (ValueError, RuntimeError, AttributeError, NotImplementedError, KeyError,
          IndexError, OSError) as e:
    raise CorruptDicomError(
        path, f"{_syntax_name(transfer_syntax)} pixel data could not be decoded: {e}") from e
  pixels = apply_modality_lut(raw, ds)
  if apply_voi:
    pixels = apply_voi_lut(pixels, ds, index=0)
  pixels = np.asarray(pixels, dtype=np.float32)
  photometric = str(ds.PhotometricInterpretation).strip()
  if photometric == "MONOCHROME1":
    # MONOCHROME1 shows its minimum as white. Mirror within the image's own
    # range so that dense tissue is bright as in MONOCHROME2.
    pixels = pixels.max() + pixels.min() - pixels
  return pixels, _metadata(ds, photometric, transfer_syntax)


def preprocess(pixels: np.ndarray, laterality: str | None,
               options: PreprocessOptions = PreprocessOptions()) -> np.ndarray:
  """Orients, crops, equalises, resizes and quantises one decoded mammogram.

  Args:
    pixels: [H, W] intensities where brighter means denser (`read_dicom`'s output).
    laterality: "L" or "R" (anything else or None: unknown, decided from the
      image content when options.orientation is "laterality").
    options: the preprocessing options.

  Returns:
    [image_size, image_size, 1] array of options.dtype; every breast faces the
    same way, with its chest wall on the left edge.

  Raises:
    EmptyImageError: the image has no contrast.
  """
  image, _ = _preprocess(pixels, laterality, options, source="<array>")
  return image


def load_mammogram(path, options: PreprocessOptions = PreprocessOptions(), *,
                   laterality: str | None = None,
                   allowed_modalities: Sequence[str] | None = DEFAULT_MODALITIES):
  """`read_dicom` followed by `preprocess`.

  Args:
    path: the DICOM file.
    options: the preprocessing options.
    laterality: the breast's side from the dataset's table; overrides the
      DICOM's ImageLaterality/Laterality tags when it is "L" or "R".
    allowed_modalities: accepted Modality values; None accepts any.

  Returns:
    (image, metadata): the [S, S, 1] image and `read_dicom`'s metadata with
    laterality set to the side used, which the orientation rule may have
    decided from the image content, declared_laterality to the side the table
    or the tags state ("" when neither does), and flipped (bool) added.
  """
  pixels, metadata = read_dicom(path, allowed_modalities, apply_voi=options.apply_voi)
  side = _normalise_side(laterality) or metadata["laterality"]
  image, (flipped, side_used) = _preprocess(pixels, side, options, source=os.fspath(path))
  metadata["laterality"] = side_used
  # What breast-level fusion groups by: a side guessed from the image is no grouping key.
  metadata["declared_laterality"] = side
  metadata["flipped"] = flipped
  return image, metadata


def chest_wall_side(pixels: np.ndarray, threshold: float = PreprocessOptions.threshold) -> str:
  """"L" or "R": the image side holding more breast tissue, i.e. the chest wall."""
  pixels = np.asarray(pixels, np.float32)
  small = _downsample(pixels, _mask_factor(pixels.shape))
  mask = _breast_mask(small, threshold, source="<array>")
  return _heavier_side(small, mask)


# --- reading ---------------------------------------------------------------


def _read_dataset(path: str):
  """Parses the file; returns (dataset, whether the parser hit end-of-file)."""
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom.errors import InvalidDicomError  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise MissingFileError(path, "file not found")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      ds = pydicom.dcmread(path)
    except InvalidDicomError:
      ds = _read_without_preamble(path)
    except Exception as e:  # pylint: disable=broad-except
      # The parser raises whatever its struct/IO layer hits on a broken header.
      raise CorruptDicomError(path, f"DICOM header cannot be parsed: "
                              f"{type(e).__name__}: {e}") from e
  # pydicom drops an encapsulated Pixel Data element cut short by the end of
  # the file and only warns; that warning is how truncation is recognised.
  hit_eof = any("End of file reached" in str(w.message) for w in caught)
  return ds, hit_eof


def _read_without_preamble(path: str):
  """Old files may lack the 128-byte preamble; accept them only if they parse."""
  import pydicom  # pylint: disable=g-import-not-at-top
  try:
    ds = pydicom.dcmread(path, force=True)
    looks_like_dicom = "SOPClassUID" in ds or "PixelData" in ds
  except Exception as e:  # pylint: disable=broad-except
    raise NotDicomError(path, "not a DICOM file (no 'DICM' marker and the content "
                        f"does not parse as a dataset: {type(e).__name__})") from e
  if not looks_like_dicom:
    raise NotDicomError(path, "not a DICOM file (no 'DICM' marker, no SOP Class UID "
                        "and no Pixel Data)")
  return ds


def _check_modality(ds, path: str, allowed: Sequence[str] | None) -> None:
  if allowed is None:
    return
  modality = str(ds.get("Modality", "") or "").strip()
  if modality not in allowed:
    found = f"modality is {modality!r}" if modality else "no Modality tag"
    raise WrongModalityError(path, f"{found}, expected one of {tuple(allowed)}")


def _check_image(ds, path: str) -> None:
  if "PixelData" not in ds:
    if "Rows" in ds:
      raise TruncatedPixelDataError(
          path, f"the file ends before its pixel data does ({os.path.getsize(path)} bytes)")
    sop = ds.get("SOPClassUID")
    kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
    raise NoPixelDataError(path, f"the dataset{kind} has no Pixel Data element")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise MultiFrameError(path, f"{frames} frames; a mammogram must be a single frame")
  photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
  if photometric not in _GREY_PHOTOMETRICS:
    raise UnsupportedPhotometricError(
        path, f"photometric interpretation {photometric or 'missing'!r}; "
        f"expected one of {_GREY_PHOTOMETRICS}")
  if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
    raise UnsupportedPhotometricError(path, f"{ds.SamplesPerPixel} samples per pixel; "
                                      "expected 1")


def _transfer_syntax(ds):
  meta = getattr(ds, "file_meta", None)
  return meta.get("TransferSyntaxUID") if meta is not None else None


def _syntax_name(transfer_syntax) -> str:
  if transfer_syntax is None:
    return "unknown transfer syntax"
  return f"transfer syntax {transfer_syntax.name!r} ({transfer_syntax})"


def _check_decoder(transfer_syntax, path: str) -> None:
  """Fails early, naming what to install, when no plugin can decode the syntax."""
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top
  if transfer_syntax is None:
    return  # pydicom falls back to the dataset's own encoding.
  try:
    decoder = get_decoder(transfer_syntax)
  except NotImplementedError as e:
    raise UnsupportedCompressionError(
        path, f"{_syntax_name(transfer_syntax)} has no pixel data decoder in pydicom and "
        "no plugin provides one; convert the file to an uncompressed or JPEG 2000 "
        "transfer syntax first") from e
  if not decoder.is_available:
    hint = next((pkgs for uids, pkgs in _PLUGIN_HINTS if str(transfer_syntax) in uids),
                "a pydicom decoder plugin for it")
    missing = "; ".join(decoder.missing_dependencies) or "none listed"
    raise UnsupportedCompressionError(
        path, f"{_syntax_name(transfer_syntax)} needs a decoder plugin that is not "
        f"installed: install {hint} (pip install 'sgc_jax[dicom]'); pydicom's other "
        f"options: {missing}")


def _check_native_length(ds, path: str, transfer_syntax) -> None:
  if transfer_syntax is None or transfer_syntax.is_compressed:
    return
  bits = int(ds.get("BitsAllocated", 16) or 16)
  expected = math.ceil(int(ds.Rows) * int(ds.Columns) * bits / 8)
  actual = len(ds.PixelData)
  if actual < expected:
    raise TruncatedPixelDataError(
        path, f"pixel data has {actual} bytes, {ds.Rows}x{ds.Columns} at {bits} bits "
        f"needs {expected}")


def _normalise_side(value) -> str:
  text = str(value or "").strip().upper()
  if text in ("L", "LEFT"):
    return "L"
  if text in ("R", "RIGHT"):
    return "R"
  return ""


def _metadata(ds, photometric: str, transfer_syntax) -> dict:
  side = ""
  for keyword in ("ImageLaterality", "Laterality"):
    side = _normalise_side(ds.get(keyword))
    if side:
      break
  return {
      "patient_id": str(ds.get("PatientID", "") or ""),
      "study_id": str(ds.get("StudyInstanceUID", "") or ""),
      "image_id": str(ds.get("SOPInstanceUID", "") or ""),
      "laterality": side,
      "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
      "bits_stored": int(ds.get("BitsStored", 0) or 0),
      "photometric": photometric,
      "modality": str(ds.get("Modality", "") or ""),
      "transfer_syntax": str(transfer_syntax or ""),
  }


# --- preprocessing ---------------------------------------------------------


def _preprocess(pixels: np.ndarray, laterality, options: PreprocessOptions, source: str):
  """Returns (image, (flipped, side used))."""
  from skimage.transform import resize  # pylint: disable=g-import-not-at-top
  pixels = np.asarray(pixels, dtype=np.float32)
  if pixels.ndim != 2:
    raise EmptyImageError(source, f"expected a 2D image, got shape {pixels.shape}")
  factor = _mask_factor(pixels.shape)
  small = _downsample(pixels, factor)
  mask = _breast_mask(small, options.threshold, source)

  side = _normalise_side(laterality)
  if options.orientation == "content" or (options.orientation == "laterality" and not side):
    # With the chest wall on the image's left the breast is a left breast as
    # mammograms are conventionally displayed.
    side = _heavier_side(small, mask)
  flip = options.orientation != "none" and side == "R"

  if options.crop_breast:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pixels = pixels[r0 * factor:r1 * factor, c0 * factor:c1 * factor]
    mask = mask[r0:r1, c0:c1]
  elif not options.mask_background:
    # Neither cropping nor masking (an ROI crop): the whole image is the
    # region whose range sets the contrast.
    mask = np.ones_like(mask)
  if flip:
    pixels, mask = pixels[:, ::-1], mask[:, ::-1]

  out_h, out_w = _output_shape(pixels.shape, options)
  image = _resize(pixels, (out_h, out_w))
  mask = resize(mask.astype(np.float32), (out_h, out_w), order=1, anti_aliasing=False) > 0.5
  if not mask.any():
    mask = np.ones_like(mask)

  lo, hi = float(image.min()), float(image[mask].max())
  if hi <= lo:
    raise EmptyImageError(source, "the image has no contrast in the breast region")
  image = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
  if options.mask_background:
    image = np.where(mask, image, 0.0)
  if options.clahe:
    from skimage.exposure import equalize_adapthist  # pylint: disable=g-import-not-at-top
    kernel = max(8, int(round(options.clahe_kernel_fraction * max(out_h, out_w))))
    image = equalize_adapthist(image, kernel_size=kernel, clip_limit=options.clahe_clip_limit)
    if options.mask_background:
      image = np.where(mask, image, 0.0)

  canvas = np.zeros((options.image_size, options.image_size), np.float64)
  top = (options.image_size - out_h) // 2
  canvas[top:top + out_h, :out_w] = image  # Padding goes right, away from the chest wall.
  quantised = np.round(canvas * options.max_value).astype(options.dtype)
  return quantised[..., None], (bool(flip), side)


def _mask_factor(shape) -> int:
  return max(1, math.ceil(max(shape) / _MASK_SIDE))


def _downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
  """Block mean over factor x factor tiles (partial edge tiles included)."""
  if factor <= 1:
    return pixels
  from skimage.transform import downscale_local_mean  # pylint: disable=g-import-not-at-top
  h, w = pixels.shape
  # Edge-replicate to a multiple of factor so partial tiles are not darkened by
  # zero padding.
  padded = np.pad(pixels, ((0, -h % factor), (0, -w % factor)), mode="edge")
  return downscale_local_mean(padded, (factor, factor)).astype(np.float32)


def _breast_mask(small: np.ndarray, threshold: float, source: str) -> np.ndarray:
  """The largest bright connected component, holes filled."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  lo, hi = float(small.min()), float(small.max())
  if hi <= lo:
    raise EmptyImageError(source, "the image is constant, no breast region to find")
  bright = small > lo + threshold * (hi - lo)
  # Opening breaks thin bridges (scanner borders, film edges touching the
  # breast) so they do not join the breast's component.
  structure = ndimage.generate_binary_structure(2, 1)
  opened = ndimage.binary_opening(bright, structure=structure, iterations=4)
  if not opened.any():
    opened = bright
  labels, count = ndimage.label(opened)
  if count == 0:
    raise EmptyImageError(source, "no pixel is above the background threshold")
  sizes = np.bincount(labels.ravel())[1:]
  mask = labels == (int(np.argmax(sizes)) + 1)
  mask = ndimage.binary_fill_holes(mask)
  # Undo the opening's erosion of the skin line.
  return ndimage.binary_dilation(mask, structure=structure, iterations=4)


def _heavier_side(small: np.ndarray, mask: np.ndarray) -> str:
  weights = np.where(mask, small - small.min(), 0.0).sum(axis=0)
  half = weights.shape[0] // 2
  return "L" if weights[:half].sum() >= weights[weights.shape[0] - half:].sum() else "R"


def _output_shape(shape, options: PreprocessOptions):
  size = options.image_size
  if options.resize == "stretch":
    return size, size
  h, w = shape
  scale = size / max(h, w)
  return max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))


def _resize(pixels: np.ndarray, out_shape) -> np.ndarray:
  """Anti-aliased resize; block-means first so the Gaussian stays small."""
  from skimage.transform import resize  # pylint: disable=g-import-not-at-top
  h, w = pixels.shape
  # Gaussian anti-aliasing at a 70x reduction is slow; an integer block mean
  # down to about twice the target is an exact box filter and nearly free.
  factor = int(min(h / out_shape[0], w / out_shape[1]) // 2)
  if factor >= 2:
    pixels = _downsample(np.ascontiguousarray(pixels), factor)
  return resize(pixels, out_shape, order=1, anti_aliasing=True, preserve_range=True,
                mode="edge").astype(np.float64)
