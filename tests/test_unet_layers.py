"""The fast layers of sgc_jax.models.layers compute what Flax's layers compute.

`layers.ConvTranspose` (one einsum) against `nn.ConvTranspose`, and
`layers.Conv` (im2col for 1x1 kernels and on maps smaller than the kernel)
against `nn.Conv`: the same parameters give the same outputs and the same
gradients with respect to the input and every parameter, and `layers.Conv`
the same forward-mode derivatives. `layers.max_pool` against `nn.max_pool`,
and its tie rule against PyTorch's.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models import layers


def _random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), tree)


def _assert_same_function(ours, reference, x):
  """Equal parameter trees, outputs and gradients (of a random projection of the output)."""
  # eval_shape: no compiled random init per shape.
  abstract = jax.eval_shape(reference.init, jax.random.key(0), x)
  assert jax.eval_shape(ours.init, jax.random.key(0), x) == abstract
  variables = _random_like(abstract, seed=1)
  cotangent = _random_like(jax.eval_shape(reference.apply, variables, x), seed=2)

  @jax.jit
  def outputs_and_grads(variables, x):
    def loss(module, v, x):
      out = module.apply(v, x)
      return jnp.sum(out * cotangent), out
    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    return grad(ours, variables, x), grad(reference, variables, x)

  ours_result, expected = outputs_and_grads(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               ours_result, expected)


@pytest.mark.parametrize("shape,factor", [((2, 3, 5, 4), 2), ((1, 1, 1, 6), 3)])
def test_einsum_conv_transpose_equals_flax(shape, factor):
  x = _random_like(jnp.zeros(shape), seed=0)
  _assert_same_function(
      layers.ConvTranspose(5, factor),
      nn.ConvTranspose(5, (factor, factor), strides=(factor, factor), padding="VALID"), x)


@pytest.mark.parametrize("shape,use_bias", [((2, 2, 2, 4), True), ((2, 1, 3, 4), False),
                                            ((2, 5, 4, 3), True)])
def test_conv_equals_flax_on_small_and_large_maps(shape, use_bias):
  # 2x2 and 1x3 maps take the im2col path, 5x4 the convolution.
  x = _random_like(jnp.zeros(shape), seed=0)
  _assert_same_function(layers.Conv(6, 3, use_bias=use_bias),
                        nn.Conv(6, (3, 3), padding=1, use_bias=use_bias), x)


@pytest.mark.parametrize("shape,kernel_size", [((2, 2, 2, 4), 3), ((2, 5, 4, 3), 3),
                                               ((2, 3, 3, 4), 1)])
def test_conv_forward_mode_equals_flax(shape, kernel_size):
  # The likelihood's divergence differentiates the U-Net in forward mode, wrt the input only;
  # also with a kernel tangent. 2x2 maps and 1x1 kernels take the im2col path, 3x3 kernels on
  # the 5x4 map the convolution.
  x = _random_like(jnp.zeros(shape), seed=0)
  ours = layers.Conv(6, kernel_size)
  reference = nn.Conv(6, (kernel_size, kernel_size), padding=kernel_size // 2)
  variables = _random_like(jax.eval_shape(reference.init, jax.random.key(0), x), seed=1)
  x_tangent, variables_tangent = _random_like(x, seed=2), _random_like(variables, seed=3)

  @jax.jit
  def jvps(variables, x):
    def both(module):
      return (jax.jvp(lambda x: module.apply(variables, x), (x,), (x_tangent,)),
              jax.jvp(module.apply, (variables, x), (variables_tangent, x_tangent)))
    return both(ours), both(reference)

  ours_result, expected = jvps(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               ours_result, expected)


def test_conv_1x1_equals_flax():
  x = _random_like(jnp.zeros((2, 3, 3, 4)), seed=0)
  _assert_same_function(layers.Conv(2, 1), nn.Conv(2, (1, 1)), x)


def test_conv_rejects_an_even_kernel():
  with pytest.raises(ValueError, match="kernel_size: must be odd"):
    layers.Conv(2, 2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


@pytest.mark.parametrize("shape,factor", [((2, 4, 6, 3), 2), ((1, 6, 3, 2), 3)])
def test_max_pool_equals_flax(shape, factor):
  x = _random_like(jnp.zeros(shape), seed=0)
  cotangent = _random_like(jnp.zeros((shape[0], shape[1] // factor, shape[2] // factor,
                                      shape[3])), seed=1)

  def pooled_and_grad(pool):
    out, vjp = jax.vjp(pool, x)
    return out, vjp(cotangent)[0]

  ours = pooled_and_grad(lambda x: layers.max_pool(x, factor))
  expected = pooled_and_grad(lambda x: nn.max_pool(x, (factor, factor), strides=(factor, factor)))
  np.testing.assert_array_equal(ours[0], expected[0])
  np.testing.assert_array_equal(ours[1], expected[1])


def test_max_pool_gradient_goes_to_the_first_maximum_as_in_pytorch():
  # Window [[1, 3], [3, 0]]: PyTorch's MaxPool2d sends the gradient to the
  # first 3 in row-major order, (0, 1), and nowhere else.
  x = jnp.asarray([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: layers.max_pool(x, 2).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_forward_mode_equals_flax_and_transposes_to_its_gradient():
  # The likelihood's divergence differentiates the U-Net in forward mode.
  x = _random_like(jnp.zeros((2, 4, 6, 3)), seed=0)
  tangent = _random_like(x, seed=1)
  cotangent = _random_like(jnp.zeros((2, 2, 3, 3)), seed=2)
  out, jv = jax.jvp(lambda x: layers.max_pool(x, 2), (x,), (tangent,))
  expected = jax.jvp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), (x,), (tangent,))
  np.testing.assert_array_equal(out, expected[0])
  np.testing.assert_array_equal(jv, expected[1])
  (grad,) = jax.vjp(lambda x: layers.max_pool(x, 2), x)[1](cotangent)
  np.testing.assert_allclose(jnp.sum(cotangent * jv), jnp.sum(grad * tangent), rtol=1e-6)
