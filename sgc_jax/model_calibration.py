"""What `sgc-evaluate` stores next to the checkpoint for `sgc-score` to apply.

`WORKDIR/calibration_<estimator>.json` holds the temperature and prior fitted
at evaluation time and the out-of-distribution threshold: the
`OOD_QUANTILE` quantile of the class-marginal bits/dim of the held-out
validation part of the training split (images of the training distribution
the model never trained on). An archive image above it is flagged, not
silently classified. One file per estimator: the denoising bound's bits/dim
are not the ODE's.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from sgc_jax import classifier, likelihood

OOD_QUANTILE = 0.995


@dataclasses.dataclass(frozen=True)
class ModelCalibration:
  """Temperature, log prior and OOD threshold (None: no validation images to set it)."""
  temperature: float
  log_prior: tuple[float, ...]
  ood_threshold_bits_per_dim: float | None
  ood_quantile: float
  ood_images: int           # validation images the threshold was set on
  estimator: str
  step: int | None          # the checkpoint step it was fitted on

  def calibration(self) -> classifier.Calibration:
    return classifier.Calibration(temperature=self.temperature,
                                  log_prior=np.asarray(self.log_prior, np.float64))


def path(workdir: str, estimator: str) -> str:
  return os.path.join(workdir, f"calibration_{estimator}.json")


def marginal_bits_per_dim(log_likelihoods, log_prior, num_dims: int, data_config) -> np.ndarray:
  """Bits/dim of log p(x) = logsumexp_y [log p(x|y) + log p(y)], per image [N]."""
  marginal = np.logaddexp.reduce(np.asarray(log_likelihoods, np.float64)
                                 + np.asarray(log_prior, np.float64), axis=1)
  return np.asarray(likelihood.bits_per_dim(marginal, num_dims, bit_depth=data_config.bit_depth,
                                            data_range=tuple(data_config.range)))


def fit(calibration: classifier.Calibration, validation_log_likelihoods, num_dims: int,
        data_config, *, estimator: str, step: int | None) -> ModelCalibration:
  """The stored calibration; the OOD threshold from validation log-likelihoods [N, C] (or None)."""
  threshold, count = None, 0
  if validation_log_likelihoods is not None and len(validation_log_likelihoods):
    bpd = marginal_bits_per_dim(validation_log_likelihoods, calibration.log_prior, num_dims,
                                data_config)
    count = len(bpd)
    threshold = float(np.quantile(bpd, OOD_QUANTILE))
  return ModelCalibration(
      temperature=float(calibration.temperature),
      log_prior=tuple(float(v) for v in np.asarray(calibration.log_prior)),
      ood_threshold_bits_per_dim=threshold, ood_quantile=OOD_QUANTILE, ood_images=count,
      estimator=estimator, step=step)


def save(workdir: str, value: ModelCalibration) -> str:
  """Writes `calibration_<estimator>.json` atomically; returns its path."""
  target = path(workdir, value.estimator)
  with open(target + ".tmp", "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(value), f, indent=2)
  os.replace(target + ".tmp", target)
  return target


def load(workdir: str, estimator: str) -> ModelCalibration | None:
  """The stored calibration for `estimator`, or None when `sgc-evaluate` has not written one."""
  target = path(workdir, estimator)
  if not os.path.exists(target):
    return None
  with open(target, encoding="utf-8") as f:
    try:
      fields = json.load(f)
      fields["log_prior"] = tuple(fields["log_prior"])
      return ModelCalibration(**fields)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{target}: not a calibration file written by sgc-evaluate ({e}); "
                       "rerun sgc-evaluate") from e
