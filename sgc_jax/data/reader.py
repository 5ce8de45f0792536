"""One reader for every dataset: grain over a TFDS array_record data source.

Training batches come from a deterministic, per-epoch reshuffled, per-process
sharded grain pipeline whose iterator state is a small JSON dict (saved in
checkpoints, so a resumed run continues with the very next batch). Evaluation
reads a split in record order, padded to whole batches.
"""
from __future__ import annotations

from typing import Iterator

import grain
import jax
import numpy as np

from sgc_jax import sharding
from sgc_jax.data import records
from sgc_jax.data.builders import get_builder_class

# Fields a batch carries to the device; metadata strings stay on the host.
ARRAY_FIELDS = ("image", "label")


def load_builder(data_config):
  """Returns the prepared builder for a config's `data` block.

  The embedded default is built on first use; datasets that need the user's
  manual download must have been converted with `sgc-convert` first.
  """
  builder_cls = get_builder_class(data_config.name)
  data_dir = data_config.get("data_dir") or records.default_data_dir()
  builder_config = data_config.get("builder_config") or None
  if getattr(builder_cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    kwargs = {"data_dir": data_dir, "file_format": records.FILE_FORMAT}
    if builder_config:
      kwargs["config"] = builder_config
    builder = builder_cls(**kwargs)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"data.name: no {data_config.name} records under {builder.data_dir}; convert the "
          f"manual download once with `sgc-convert {data_config.name} --manual_dir DIR "
          f"--data_dir {data_dir}`")
    return builder
  if jax.process_count() > 1:
    # One writer: concurrent builds race on renaming TFDS's temporary directory.
    if jax.process_index() == 0:
      records.prepare(builder_cls, data_dir, config=builder_config)
    sharding.barrier(f"prepare {data_config.name} records")
  return records.prepare(builder_cls, data_dir, config=builder_config)


# A training shard of at most this many decoded bytes is read into memory once, and each batch
# gathered by indexing: grain's record-by-record path (read, map, stack) cost 19 ms per digits
# batch of 128 on the 2-core host, more than the demo MLP's whole step; in memory it costs
# well under 1 ms. Larger shards (full-size mammograms) are read record by record.
_IN_MEMORY_BYTES = 1 << 30


def _stack(records_, fields=ARRAY_FIELDS) -> dict:
  """{field: [B, ...] array} of the records' `fields`."""
  return {k: np.stack([np.asarray(r[k]) for r in records_]) for k in fields}


def _batch_reader(shard):
  """A function from [B] positions in `shard` to the batch of their records' arrays."""
  first = shard[0]
  if sum(v.nbytes for v in _stack([first]).values()) * len(shard) <= _IN_MEMORY_BYTES:
    arrays = _stack([first] + [shard[i] for i in range(1, len(shard))])
    return lambda positions: {k: v[positions] for k, v in arrays.items()}
  return lambda positions: _stack([shard[int(i)] for i in positions])


def train_dataset(source, *, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1) -> grain.IterDataset:
  """Infinite batches of `batch_size` for one process, reshuffled every epoch.

  Each process reads only its `shard_index`-th slice of the records. The
  pipeline shuffles and batches record positions, then reads each batch at
  once: the same batches, in the same order, as shuffling the records
  themselves; its iterator state counts batches.
  """
  if len(source) < shard_count * batch_size:
    raise ValueError(f"training.batch_size: {batch_size} per process is larger than the "
                     f"{len(source) // shard_count} training records each process holds")
  shard = SubsetSource(source, np.arange(shard_index, len(source), shard_count))
  positions = (grain.MapDataset.range(len(shard))
               .shuffle(seed=seed)
               .repeat()
               .batch(batch_size, drop_remainder=True))
  # A background thread reads the next batches while the device computes; the iterator
  # state (the next batch's index) stays exact, so resuming is unaffected.
  read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  return positions.map(_batch_reader(shard)).to_iter_dataset(read_options=read_options)


def eval_batches(source, *, batch_size: int, shard_index: int = 0, shard_count: int = 1,
                 fields=ARRAY_FIELDS) -> Iterator[tuple[dict, int]]:
  """Yields (batch, n_valid): the shard's records in order, last batch padded.

  Padding repeats the last record, so shapes stay static (no retracing) and the
  caller drops the padded rows with `n_valid`.
  """
  shard = grain.MapDataset.source(source)[shard_index::shard_count]
  n = len(shard)
  for start in range(0, n, batch_size):
    rows = [shard[i] for i in range(start, min(start + batch_size, n))]
    n_valid = len(rows)
    rows += [rows[-1]] * (batch_size - n_valid)
    yield _stack(rows, fields), n_valid


def labels_of(source) -> np.ndarray:
  """All labels of a source, for empirical priors and class weights."""
  return np.asarray([int(source[i]["label"]) for i in range(len(source))])


class SubsetSource:
  """A random-access view of some records of another source."""

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    return self._source[int(self._indices[i])]


def train_validation_sources(builder, validation_fraction: float, *, seed: int):
  """Splits the train records into (train, validation) sources, stratified and fixed.

  The validation part fits the calibration temperature and is never trained on.
  """
  source = records.data_source(builder, "train")
  if not validation_fraction:
    return source, None
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  labels = labels_of(source)
  train_idx, val_idx = train_test_split(np.arange(len(source)), test_size=validation_fraction,
                                        random_state=seed, stratify=labels)
  return SubsetSource(source, np.sort(train_idx)), SubsetSource(source, np.sort(val_idx))


def training_sources(builder, data_config, *, seed: int):
  """(train, validation) sources as `data_config` asks: `train_validation_sources`,
  then at most `data_config.train_per_class[c]` training images of class c.

  The caps (for low-data and class-imbalance studies) take a random subset of
  each class, fixed by `data_config.subset_seed`; the validation part is left
  whole. An empty `train_per_class` keeps every image.
  """
  train, validation = train_validation_sources(builder, data_config.validation_fraction, seed=seed)
  caps = tuple(data_config.get("train_per_class", ()))
  if not caps:
    return train, validation
  labels = labels_of(train)
  if len(caps) != int(labels.max()) + 1:
    raise ValueError(f"data.train_per_class: {len(caps)} caps for {int(labels.max()) + 1} "
                     "classes; give one per class")
  rng = np.random.default_rng(data_config.get("subset_seed", 0))
  keep = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c, cap in enumerate(caps)]
  return SubsetSource(train, np.sort(np.concatenate(keep))), validation
