"""What `sgc-evaluate` stores next to the checkpoint for `sgc-score` to apply.

`WORKDIR/calibration_<estimator>.json` holds the temperature and prior fitted
at evaluation time and the out-of-distribution thresholds, set on the
held-out validation part of the training split (images of the training
distribution the model never trained on). Likelihood models rate inputs
simpler than their data (blank, under-exposed, smoothed) as *more* likely
(Nalisnick et al., ICLR 2019), so a "bits/dim too high" test alone misses
them. Three tests, each with its own threshold:

* `low_bits` / `high_bits`: two-sided typicality on the class-marginal
  bits/dim (Nalisnick et al. 2019b): below its `OOD_LOW_QUANTILE` or above its
  `OOD_QUANTILE` validation quantile;
* `complexity`: the complexity-corrected score of Serrà et al. (ICLR 2020),
  the marginal bits/dim minus the bits/dim a lossless compressor needs for the
  same integer image (`compressed_bits`: PNG's Paeth predictor and zlib at
  level 9), above its `OOD_COMPLEXITY_QUANTILE` validation quantile. A simple
  image is cheap for the compressor too, so its score stays high.

An archive image that fails any test is flagged, not silently classified.
One file per estimator: the denoising bound's bits/dim are not the ODE's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib

from absl import logging
import numpy as np

from sgc_jax import classifier, likelihood, run_dir

# Each side of the two-sided test keeps 0.25 % of validation images out: 0.5 % in all, as
# the one-sided 99.5th percentile that came before it.
OOD_LOW_QUANTILE = 0.0025
OOD_QUANTILE = 0.9975
OOD_COMPLEXITY_QUANTILE = 0.995
COMPRESSOR = "paeth+zlib9"
# The tests, in the order `scores.parquet` reports them (column `ood_<test>`).
OOD_TESTS = ("low_bits", "high_bits", "complexity")


@dataclasses.dataclass(frozen=True)
class ModelCalibration:
  """Temperature, log prior and OOD thresholds (None: not set, see `missing_ood_tests`).

  `ood_threshold_bits_per_dim` is the high side of the bits/dim test (the
  only OOD threshold of files written before the other two existed, at its
  then `ood_quantile` 0.995); such files load with the new fields None.
  """
  temperature: float
  log_prior: tuple[float, ...]
  ood_threshold_bits_per_dim: float | None
  ood_quantile: float
  ood_images: int           # validation images the thresholds were set on
  estimator: str
  step: int | None          # the checkpoint step it was fitted on
  ood_low_threshold_bits_per_dim: float | None = None
  ood_low_quantile: float | None = None
  ood_complexity_threshold: float | None = None
  ood_complexity_quantile: float | None = None
  ood_compressor: str | None = None

  def calibration(self) -> classifier.Calibration:
    return classifier.Calibration(temperature=self.temperature,
                                  log_prior=np.asarray(self.log_prior, np.float64))

  def thresholds(self) -> dict[str, float | None]:
    """{test: its threshold or None}, for `OOD_TESTS`."""
    return {"low_bits": self.ood_low_threshold_bits_per_dim,
            "high_bits": self.ood_threshold_bits_per_dim,
            "complexity": self.ood_complexity_threshold}

  def missing_ood_tests(self) -> tuple[str, ...]:
    """The OOD tests this calibration sets no threshold for."""
    return tuple(name for name, value in self.thresholds().items() if value is None)


def path(workdir: str, estimator: str) -> str:
  return os.path.join(workdir, f"calibration_{estimator}.json")


def marginal_bits_per_dim(log_likelihoods, log_prior, num_dims: int, data_config) -> np.ndarray:
  """Bits/dim of log p(x) = logsumexp_y [log p(x|y) + log p(y)], per image [N]."""
  marginal = np.logaddexp.reduce(np.asarray(log_likelihoods, np.float64)
                                 + np.asarray(log_prior, np.float64), axis=1)
  return np.asarray(likelihood.bits_per_dim(marginal, num_dims, bit_depth=data_config.bit_depth,
                                            data_range=tuple(data_config.range)))


def compressed_bits(image) -> int:
  """Bits zlib (level 9) needs for an integer image [H, W, C] after PNG's Paeth predictor.

  Each sample is predicted, as PNG's filter type 4 does, from its left, upper
  and upper-left neighbours (0 outside the image), per channel; the residuals
  modulo 2^(8 * itemsize) are deflated. The predictor is what makes smooth
  images cheap: deflate alone only finds exact repeats.
  """
  x = np.asarray(image)
  wide = x.astype(np.int64)
  a = np.pad(wide, ((0, 0), (1, 0), (0, 0)))[:, :-1]      # left
  b = np.pad(wide, ((1, 0), (0, 0), (0, 0)))[:-1]         # up
  c = np.pad(wide, ((1, 0), (1, 0), (0, 0)))[:-1, :-1]    # up-left
  p = a + b - c
  pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
  predicted = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
  residual = np.mod(wide - predicted, 2 ** (8 * x.dtype.itemsize)).astype(x.dtype)
  return 8 * len(zlib.compress(residual.tobytes(), 9))


def complexity_score(marginal_bpd, image, num_dims: int) -> float:
  """Serrà et al.'s S(x) per dimension: model bits/dim minus the compressor's, same dims."""
  return float(marginal_bpd) - compressed_bits(image) / num_dims


def ood_scores(log_likelihoods, images, log_prior, num_dims: int,
               data_config) -> tuple[np.ndarray, np.ndarray]:
  """(marginal bits/dim [N], complexity score [N]) of images [N, H, W, C] and their [N, C]."""
  bpd = marginal_bits_per_dim(log_likelihoods, log_prior, num_dims, data_config)
  return bpd, np.asarray([complexity_score(v, x, num_dims) for v, x in zip(bpd, images)])


def ood_tests(calibration: ModelCalibration | None, bpd: float,
              complexity: float) -> dict[str, bool | None]:
  """{test: fired} for `OOD_TESTS` and "any" (None for a test without a threshold)."""
  thresholds = {} if calibration is None else calibration.thresholds()
  fired = {}
  for name, value, above in (("low_bits", bpd, False), ("high_bits", bpd, True),
                             ("complexity", complexity, True)):
    threshold = thresholds.get(name)
    fired[name] = (None if threshold is None
                   else bool(value > threshold if above else value < threshold))
  known = [v for v in fired.values() if v is not None]
  fired["any"] = any(known) if known else None
  return fired


def fit(calibration: classifier.Calibration, validation_log_likelihoods, num_dims: int,
        data_config, *, estimator: str, step: int | None,
        validation_images=None) -> ModelCalibration:
  """The stored calibration, with OOD thresholds set on the validation images.

  Args:
    calibration: the fitted temperature and prior.
    validation_log_likelihoods: [N, C] of the validation images (None or
      empty: no thresholds).
    num_dims: dimensions of a model input (as in its bits/dim).
    data_config: the run's `data` block (bit depth, range).
    estimator, step: what the log-likelihoods were computed with.
    validation_images: the N integer records [H, W, C] of those rows, in
      order (an iterable); None: no complexity threshold.
  """
  high = None
  count = 0
  fields = {}
  if validation_log_likelihoods is not None and len(validation_log_likelihoods):
    bpd = marginal_bits_per_dim(validation_log_likelihoods, calibration.log_prior, num_dims,
                                data_config)
    count = len(bpd)
    high = float(np.quantile(bpd, OOD_QUANTILE))
    fields.update(ood_low_threshold_bits_per_dim=float(np.quantile(bpd, OOD_LOW_QUANTILE)),
                  ood_low_quantile=OOD_LOW_QUANTILE)
    if validation_images is not None:
      scores = [complexity_score(v, x, num_dims) for v, x in zip(bpd, validation_images)]
      if len(scores) != count:
        raise ValueError(f"validation_images: {len(scores)} images for {count} rows")
      fields.update(ood_complexity_threshold=float(np.quantile(scores, OOD_COMPLEXITY_QUANTILE)),
                    ood_complexity_quantile=OOD_COMPLEXITY_QUANTILE, ood_compressor=COMPRESSOR)
  return ModelCalibration(
      temperature=float(calibration.temperature),
      log_prior=tuple(float(v) for v in np.asarray(calibration.log_prior)),
      ood_threshold_bits_per_dim=high, ood_quantile=OOD_QUANTILE, ood_images=count,
      estimator=estimator, step=step, **fields)


def save(workdir: str, value: ModelCalibration) -> str:
  """Writes `calibration_<estimator>.json` atomically; returns its path."""
  target = path(workdir, value.estimator)
  run_dir.write_text_atomically(target, json.dumps(dataclasses.asdict(value), indent=2))
  return target


def load(workdir: str, estimator: str) -> ModelCalibration | None:
  """The stored calibration for `estimator`, or None when `sgc-evaluate` has not written one.

  A file written before an OOD test existed loads without its threshold, and
  a warning names the tests it cannot run.
  """
  target = path(workdir, estimator)
  value = run_dir.read_record(target, ModelCalibration, "sgc-evaluate")
  if value is None:
    return None
  missing = value.missing_ood_tests()
  if value.ood_images and missing:
    logging.warning("%s sets no threshold for the OOD test(s) %s (written before they "
                    "existed): their ood_* columns are null; rerun sgc-evaluate to set them",
                    target, ", ".join(missing))
  return value
