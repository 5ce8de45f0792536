"""The training pipeline: batches of shuffled record positions, read at once."""
import grain
import numpy as np
import pytest

from sgc_jax.data import reader


class _Records:
  """A random-access source of N records, each an 'image' and a 'label' like the TFDS ones."""

  def __init__(self, n):
    rng = np.random.default_rng(0)
    self._images = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    self.reads = 0

  def __len__(self):
    return len(self._images)

  def __getitem__(self, i):
    self.reads += 1
    return {"image": self._images[i], "label": int(i % 10), "id": f"record-{i}"}


def _records_shuffled(source, batch_size, seed, shard_index, shard_count):
  """The pipeline it replaced: grain shuffling the records themselves, then batching them."""
  dataset = (grain.MapDataset.source(source)[shard_index::shard_count].shuffle(seed=seed)
             .map(lambda r: {k: np.asarray(r[k]) for k in reader.ARRAY_FIELDS}).repeat()
             .batch(batch_size, drop_remainder=True))
  return iter(dataset.to_iter_dataset())


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("shard_index,shard_count", [(0, 1), (1, 2)])
def test_batches_equal_shuffling_the_records_themselves(monkeypatch, in_memory, shard_index,
                                                        shard_count):
  """Same batches, same order, across epochs (37 records, batches of 8 span their boundary)."""
  if not in_memory:
    monkeypatch.setattr(reader, "_IN_MEMORY_BYTES", 0)
  source = _Records(37)
  ours = iter(reader.train_dataset(source, batch_size=8, seed=3, shard_index=shard_index,
                                   shard_count=shard_count))
  theirs = _records_shuffled(source, 8, 3, shard_index, shard_count)
  for _ in range(12):    # 4 or 2 batches an epoch: several reshuffled epochs
    a, b = next(ours), next(theirs)
    assert set(a) == set(reader.ARRAY_FIELDS)
    for k in reader.ARRAY_FIELDS:
      np.testing.assert_array_equal(a[k], b[k])
      assert a[k].dtype == b[k].dtype
  assert ours.get_state() == {"next_index": 12}


def test_a_small_shard_is_read_once_and_a_large_one_per_batch(monkeypatch):
  source = _Records(40)
  batches = iter(reader.train_dataset(source, batch_size=8, seed=0))
  for _ in range(20):    # 4 epochs
    next(batches)
  assert source.reads == 40
  monkeypatch.setattr(reader, "_IN_MEMORY_BYTES", 0)
  source = _Records(40)
  batches = iter(reader.train_dataset(source, batch_size=8, seed=0))
  for _ in range(20):
    next(batches)
  # The first record sizes the shard; then each batch reads its own records (and the
  # background thread may have read up to 4 batches ahead).
  assert 1 + 20 * 8 <= source.reads <= 1 + 24 * 8


def test_a_resumed_iterator_continues_with_the_next_batch():
  source = _Records(37)
  straight = iter(reader.train_dataset(source, batch_size=8, seed=1))
  for _ in range(5):
    next(straight)
  resumed = iter(reader.train_dataset(source, batch_size=8, seed=1))
  resumed.set_state(straight.get_state())
  for _ in range(7):
    np.testing.assert_array_equal(next(resumed)["image"], next(straight)["image"])
