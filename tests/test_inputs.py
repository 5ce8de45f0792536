"""Training augmentation: random whole-pixel shifts (and flips) of model inputs."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgc_jax import inputs


def _images(batch=64, size=6):
  return jnp.arange(batch * size * size, dtype=jnp.float32).reshape(batch, size, size, 1)


def test_shifts_are_translations_by_multiples_with_edge_filled_borders():
  x = _images()
  shifted = np.asarray(inputs.random_shifts(jax.random.key(0), x, (2, 2)))
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
  seen = set()
  for image, original in zip(shifted, padded):
    # Each output is the edge-padded original cropped at one offset, never an odd one.
    matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(image, original[2 - dy:8 - dy, 2 - dx:8 - dx])]
    assert len(matches) == 1 and all(v % 2 == 0 for v in matches[0])
    seen.add(matches[0])
  assert len(seen) == 9                          # every offset in {-2, 0, 2}^2 drawn in 64 images


def test_no_shift_and_no_flip_leave_inputs_untouched():
  x = _images(batch=4)
  data = ml_collections.ConfigDict({"random_shift": (0, 1), "random_flip": (False, False)})
  np.testing.assert_array_equal(inputs.augment(jax.random.key(1), x, data), x)
  data.random_shift = (1, 1)
  moved = np.asarray(inputs.augment(jax.random.key(1), _images(batch=32), data))
  assert not np.array_equal(moved, _images(batch=32))
