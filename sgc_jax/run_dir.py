"""A run directory: the config it was trained with, what its model scores, and its checkpoint.

    WORKDIR/config.json      the validated config (written by sgc-train and sgc-import-seed)
    WORKDIR/model_spec.json  what scoring needs from the training records: image shape and
                             dtype, class names, bit depth, DICOM preprocessing (`ModelSpec`)
    WORKDIR/checkpoints/     the orbax checkpoints (`sgc_jax.checkpointing`)

With the spec beside the checkpoint a workdir travels: `sgc_jax.load` and
`sgc-score` work on a machine that has never seen the training records. The
trainer, `seed_import`, the loader (`sgc_jax.api`) and scoring share this
module, so none of them imports another to reach a run's files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from sgc_jax import checkpointing
from sgc_jax.data import dicom

CONFIG_FILE = "config.json"
SPEC_FILE = "model_spec.json"
# Where this machine keeps its records, and a fact validation fills in from the dataset:
# neither says which model a run trained.
_MACHINE_FIELDS = ("data.data_dir", "data.num_classes")
# Options added after runs were saved, with the value every earlier run trained with: a run
# saved before one of them reads as what it was, so it resumes, scores and passes the same-run
# check against today's configs.
_ADDED_LATER = {"data.random_shift": (0, 1), "model.unet.dropout": 0.0,
                "model.unet.norm": "batch", "eval.num_dequantizations": 1}


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` beside it and renames it into place."""
  # Written beside and renamed: a reader never sees half a file.
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def read_record(path: str, record_type, what: str, *, tuple_fields=("log_prior",)):
  """The dataclass `record_type` stored as JSON at `path`, or None when there is no file.

  A file that is not such a record raises naming it and `what` wrote it, so that
  the user reruns that command rather than reading a traceback.
  """
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      fields = json.load(f)
      for name in tuple_fields:
        fields[name] = tuple(fields[name])
      return record_type(**fields)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a {record_type.__name__} written by {what} ({e}); "
                       f"rerun {what}") from e


def write_config(config, workdir: str) -> None:
  """Writes `config` to `workdir/config.json`."""
  os.makedirs(workdir, exist_ok=True)
  write_text_atomically(os.path.join(workdir, CONFIG_FILE),
                         config.to_json_best_effort(indent=2, sort_keys=True))


def has_config(workdir: str) -> bool:
  """Whether `workdir` holds a saved config (runs before the file existed do not)."""
  return os.path.exists(os.path.join(workdir, CONFIG_FILE))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir` (see `write_config`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir: no {CONFIG_FILE} in {workdir} (written by sgc-train); "
                            "pass the run's config explicitly (--config)")
  with open(path, encoding="utf-8") as f:
    try:
      saved = _tuples(json.load(f))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
  return ml_collections.ConfigDict(with_added_options(saved))


def with_added_options(saved: dict) -> dict:
  """`saved` (a config as nested dicts, or any part of one under its block names) with the
  options added after it was written set to the value every earlier run trained with."""
  for name, value in _ADDED_LATER.items():
    *blocks, field = name.split(".")
    block = saved
    for part in blocks:
      block = block.get(part) if isinstance(block, dict) else None
    if isinstance(block, dict):
      block.setdefault(field, value)
  return saved


def _tuples(value):
  """JSON's lists back as the tuples the configs hold, so `--config.FIELD` can override them."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _plain(value):
  """Nested ConfigDicts, dicts, tuples and lists as dicts and lists, to compare as JSON does."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _differences(saved: dict, given: dict, prefix: str = "") -> list[str]:
  """Dotted names of the fields whose values differ (or exist on one side only)."""
  out = []
  for key in sorted(set(saved) | set(given)):
    name = prefix + key
    a, b = saved.get(key), given.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, name + ".")
    elif a != b and name not in _MACHINE_FIELDS:
      out.append(name)
  return out


def _field(config: dict, name: str):
  for part in name.split("."):
    config = config.get(part) if isinstance(config, dict) else None
  return config


def check_same_run(config, saved, workdir: str) -> None:
  """Raises naming the first field outside `eval` where `config` differs from the run's `saved`.

  Everything outside the `eval` block says which model was trained and on
  which records (the data block also picks the DICOM preprocessing): scoring
  with another crop, bit depth or network than the run's would silently score
  something else. The `eval` block (estimator, solver, ...) may differ.
  """
  saved, given = _plain(saved), _plain(config)
  saved.pop("eval", None)
  given.pop("eval", None)
  differ = _differences(saved, given)
  if differ:
    name = differ[0]
    raise ValueError(
        f"--config: {name} is {_field(given, name)!r}, the model in {workdir} was trained with "
        f"{_field(saved, name)!r} (differing: {', '.join(differ)}); leave --config out to use "
        "the trained run's config, or change only its eval block")


def config_hash(config) -> str:
  """A short stable hash of a config, without where this machine keeps its records."""
  config = _plain(config)
  config.get("data", {}).pop("data_dir", None)
  return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a trained model scores, read from its training records once and stored with it.

  Attributes:
    dataset: the records' builder name (e.g. "digits", "cbis_ddsm").
    builder_config: the builder config the records were made with, or None.
    image_shape: (H, W, C) of the stored records (C before channel replication).
    image_dtype: their numpy dtype name ("uint8", "uint16").
    class_names: one name per class, in label order (benign/malignant for mammograms).
    bit_depth: bits per stored pixel value.
    preprocess: the `dicom.PreprocessOptions` fields the records were made with
      (None for records not made from DICOMs).
    allowed_modalities: DICOM modalities the records' builder accepts (None: any,
      or not made from DICOMs).
  """
  dataset: str
  builder_config: str | None
  image_shape: tuple[int, int, int]
  image_dtype: str
  class_names: tuple[str, ...]
  bit_depth: int
  preprocess: dict[str, Any] | None = None
  allowed_modalities: tuple[str, ...] | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def preprocess_options(self) -> dicom.PreprocessOptions | None:
    """How a DICOM becomes one of the model's records; None when the records are not DICOMs."""
    return None if self.preprocess is None else dicom.PreprocessOptions(**self.preprocess)

  def input_shape(self, num_channels: int) -> tuple[int, int, int]:
    """(H, W, C) of the model inputs: the records' size with `num_channels` channels."""
    return (*self.image_shape[:2], num_channels)

  @classmethod
  def from_builder(cls, builder, data_config) -> "ModelSpec":
    """The spec of the records `builder` reads, trained on with `data_config`."""
    feature = builder.info.features["image"]
    builder_config = getattr(builder, "builder_config", None)
    options = (builder_config.preprocess_options()
               if hasattr(builder_config, "preprocess_options") else None)
    modalities = getattr(type(builder), "ALLOWED_MODALITIES", None) if options else None
    # Mammography builders name their classes in the dataset metadata; others by label.
    names = (builder.info.metadata or {}).get("class_names") or builder.info.features[
        "label"].names
    return cls(dataset=builder.name, builder_config=builder_config and builder_config.name,
               image_shape=tuple(int(d) for d in feature.shape),
               image_dtype=np.dtype(feature.np_dtype).name,
               class_names=tuple(str(n) for n in names), bit_depth=int(data_config.bit_depth),
               preprocess=dataclasses.asdict(options) if options else None,
               allowed_modalities=None if modalities is None else tuple(modalities))


def write_model_spec(spec: ModelSpec, workdir: str) -> None:
  """Writes `spec` to `workdir/model_spec.json`."""
  os.makedirs(workdir, exist_ok=True)
  write_text_atomically(os.path.join(workdir, SPEC_FILE),
                         json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))


def read_model_spec(workdir: str) -> ModelSpec | None:
  """The spec stored in `workdir`, or None for a run trained before specs were stored."""
  path = os.path.join(workdir, SPEC_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    fields = json.load(f)
  for name in ("image_shape", "class_names", "allowed_modalities"):
    if fields.get(name) is not None:
      fields[name] = tuple(fields[name])
  return ModelSpec(**fields)


def latest_step(workdir: str, manager=None) -> int | None:
  """The latest checkpointed step of `workdir` (None without checkpoints).

  Every process must call it: orbax's manager waits at a barrier for all of
  them when it is opened. Pass an open `manager` to reuse it.
  """
  manager = manager or checkpointing.make_manager(workdir)
  return checkpointing.latest_step(manager)


def variables_hash(variables) -> str:
  """A short stable hash of a model's variables: equal exactly when every array is.

  What identifies a checkpoint's model wherever the workdir was copied to
  (orbax's files also hold timestamps); scoring records it with its rows.
  """
  digest = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}\n".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class CheckpointIdentity:
  """Which model scored: its training step, its variables' hash and its config's hash."""
  step: int | None  # None: in-memory variables never checkpointed
  variables_hash: str
  config_hash: str
