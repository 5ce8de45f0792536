"""The scorer and its rows: decoded images -> fixed-shape batches -> scores and error rows.

Batches of `per_device_batch` images per local device are scored by the
model's class scorer (all classes in one pass, sharded over the local
devices). An image is dequantized and probed with keys folded from its
identity (`image_id`), so its numbers do not depend on its batch, its process
or the run. The per-device batch is a fixed flag, not derived from the device
count: the adaptive solves' round-off depends on the shapes they run at, and
equal shapes give equal rows on any device count.
"""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pyarrow as pa

from sgc_jax import likelihood, model_calibration
from sgc_jax.scoring.decode import Decoded
from sgc_jax.scoring.inputs import clean_text

SOLVER_FAILURE = "SolverFailureError"
SHAPE_MISMATCH = "ShapeMismatchError"


def image_id(decoded: Decoded) -> int:
  """The uint32 that keys an image's dequantization and probes: its identity, not its place.

  A record's stored id (as `sgc-evaluate` uses it), else a hash of the
  SOPInstanceUID (the same image under two paths scores the same), else of
  the real path.
  """
  metadata = decoded.metadata or {}
  if "record_id" in metadata:
    return metadata["record_id"] % 2**32
  name = metadata.get("image_id") or os.path.realpath(decoded.item.path)
  return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "replace"), digest_size=4)
                        .digest(), "little")


def schemas(names) -> tuple[pa.Schema, pa.Schema]:
  """The (scores, errors) table schemas for classes `names`."""
  common = [("key", pa.string()), ("path", pa.string()), ("file_size", pa.int64()),
            ("mtime", pa.float64()), ("sop_instance_uid", pa.string())]
  scores = common + [
      ("study_instance_uid", pa.string()), ("patient_id", pa.string()), ("view", pa.string()),
      ("laterality", pa.string()), ("declared_laterality", pa.string()),
      ("image_key", pa.uint32())]
  scores += [(f"log_likelihood_{n}", pa.float64()) for n in names]
  scores += [(f"bits_per_dim_{n}", pa.float64()) for n in names]
  scores += [(f"probability_{n}", pa.float64()) for n in names]
  scores += [("prediction", pa.string())]
  scores += [(f"nfe_{n}", pa.int64()) for n in names]
  # The OOD scores (`model_calibration`), which of its tests fired, and `ood`: any did.
  scores += [(name, pa.float64()) for name in ("ood_score_bits_per_dim",
                                              "ood_compressor_bits_per_dim",
                                              "ood_complexity_score")]
  scores += [(f"ood_{test}", pa.bool_()) for test in model_calibration.OOD_TESTS]
  scores += [("ood", pa.bool_())]
  errors = common + [("reason", pa.string()), ("message", pa.string())]
  return pa.schema(scores), pa.schema(errors)


def _identity_columns(decoded: Decoded) -> dict:
  # A file as read before decoding (`inputs.read_identity`): what a rerun compares it by.
  item = decoded.item
  uid = (clean_text((decoded.metadata or {}).get("image_id", "")) if item.record is not None
         else item.sop_instance_uid)
  return {"key": item.key, "path": clean_text(item.path), "file_size": item.file_size,
          "mtime": item.mtime, "sop_instance_uid": uid}


def error_row(decoded: Decoded, error: tuple[str, str]) -> dict:
  """The errors-table row of an input that is not scored."""
  row = _identity_columns(decoded)
  row["reason"], row["message"] = error[0], clean_text(error[1])
  return row


class Scorer:
  """Scores decoded images in fixed-shape batches; turns results into table rows."""

  def __init__(self, trained, calibration, per_device_batch: int):
    config = trained.config
    self.trained = trained
    self.batch_size = per_device_batch * trained.mesh.size
    self.names = list(trained.spec.class_names)
    self.num_dims = math.prod(trained.image_shape[:2]) * config.data.num_channels
    self.data_config = config.data
    self.calibration = calibration
    self.prior = (calibration.log_prior if calibration is not None else
                  np.full(len(self.names), -math.log(len(self.names))))
    self.dtype = np.dtype(trained.spec.image_dtype)

  def check_image(self, decoded: Decoded) -> Decoded:
    """Records of another shape or dtype than the model's become errors."""
    image = decoded.image
    if image.shape != self.trained.image_shape or image.dtype != self.dtype:
      decoded.error = (SHAPE_MISMATCH,
                       f"{decoded.item.path}: image {image.shape} {image.dtype}, the model "
                       f"scores {self.trained.image_shape} {self.dtype}")
      decoded.image = None
    return decoded

  def score(self, batch: list[Decoded]) -> tuple[list[dict], list[dict]]:
    """(score rows, error rows) of up to `batch_size` decoded images."""
    n = len(batch)
    take = np.minimum(np.arange(self.batch_size), n - 1)  # pad by repeating the last image
    ids = np.asarray([image_id(batch[i]) for i in take], np.uint32)
    # Always the full batch shape: one compilation, and the same round-off for every image.
    result = self.trained.log_likelihoods(np.stack([batch[i].image for i in take]), ids=ids)
    ll = np.asarray(result.log_likelihood, np.float64)[:n]
    nfe = result.num_function_evals[:n]
    success = result.success[:n]
    scores, errors = [], []
    for i, decoded in enumerate(batch):
      if not success[i].all():
        failed = [self.names[c] for c in np.flatnonzero(~success[i])]
        errors.append(error_row(decoded, (SOLVER_FAILURE, (
            f"{decoded.item.path}: the likelihood solve failed for class(es) {failed} "
            f"after {int(nfe[i].sum())} network evaluations"))))
        continue
      scores.append(self._row(decoded, ll[i], nfe[i], int(ids[i])))
    return scores, errors

  def _row(self, decoded: Decoded, ll: np.ndarray, nfe: np.ndarray, identity: int) -> dict:
    bpd = likelihood.bits_per_dim(ll, self.num_dims, bit_depth=self.data_config.bit_depth,
                                  data_range=tuple(self.data_config.range))
    marginal = float(model_calibration.marginal_bits_per_dim(
        ll[None], self.prior, self.num_dims, self.data_config)[0])
    if self.calibration is not None:
      logpost = self.calibration.calibration().apply(ll[None])[0]
    else:
      logpost = ll + self.prior - np.logaddexp.reduce(ll + self.prior)
    probs = np.exp(logpost)
    metadata = decoded.metadata or {}
    row = _identity_columns(decoded)
    for column, field in (("study_instance_uid", "study_id"), ("patient_id", "patient_id"),
                          ("view", "view"), ("laterality", "laterality")):
      row[column] = clean_text(metadata.get(field, ""))
    # Records hold the side their dataset's table or tags declared; a DICOM's preprocessing
    # may have guessed `laterality` from the image, and fusion must not group by a guess.
    row["declared_laterality"] = clean_text(metadata.get("declared_laterality",
                                                         metadata.get("laterality", "")))
    row["image_key"] = identity
    for c, name in enumerate(self.names):
      row[f"log_likelihood_{name}"] = float(ll[c])
    for c, name in enumerate(self.names):
      row[f"bits_per_dim_{name}"] = float(bpd[c])
    for c, name in enumerate(self.names):
      row[f"probability_{name}"] = float(probs[c])
    row["prediction"] = self.names[int(np.argmax(probs))]
    # Per (image, class), as metrics.json's mean_nfe counts them.
    for c, name in enumerate(self.names):
      row[f"nfe_{name}"] = int(nfe[c])
    compressor = model_calibration.compressed_bits(decoded.image) / self.num_dims
    complexity = marginal - compressor
    row["ood_score_bits_per_dim"] = marginal
    row["ood_compressor_bits_per_dim"] = compressor
    row["ood_complexity_score"] = complexity
    fired = model_calibration.ood_tests(self.calibration, marginal, complexity)
    for test in model_calibration.OOD_TESTS:
      row[f"ood_{test}"] = fired[test]
    row["ood"] = fired["any"]
    return row
