"""Score networks and the helpers that build, initialise and call them.

Every model is a `flax.linen.Module` with fields `num_classes` and `dtype` and

    model.apply(variables, x, t, y, train=False) -> out

with x [B,H,W,C] float, t [B] float in [0, 1], y [B] int32 labels and out
float32 [B,H,W,C]. The output estimates -z, the negative of the unit Gaussian
noise in x_t = alpha(t) x_0 + sigma(t) z; the score is out / sigma(t)
(`make_score_fn`). Networks know nothing about SDEs; only the optional
`ClassGaussianSkip` wrapper reads an SDE's alpha(t) and sigma(t) to add its
closed-form class-Gaussian scores.

Variables: `params` (float32, trained), plus `batch_stats` (SeedUNet's
BatchNorm), `constants` (SeedUNet's fixed Fourier frequencies) and
`class_gaussian` (the skip's fitted Gaussians) where the model has them.
Only `params` should be given to the optimiser; every collection must be
given to `apply` and saved in checkpoints.

Model config layout (an `ml_collections.ConfigDict`), one sub-dict per model:

    model.name = "unet" | "ddpmpp" | "mlp"
    model.dtype = "float32" | "bfloat16"      # compute dtype
    model.unet.channels, .embed_dim, .fourier_scale, .dropout, .norm
    model.ddpmpp.ch, .ch_mult, .num_res_blocks, .attn_resolutions, .dropout
    model.mlp.hidden, .depth
    model.class_gaussian = "none" | "full" | "diagonal"   # see class_gaussian.py
    model.class_gaussian_shrinkage = 0.1

Fields left out of a sub-dict take the module's defaults; only the sub-dict
of the selected model is read.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sgc_jax.models.class_gaussian import COVARIANCES, ClassGaussianSkip
from sgc_jax.models.ddpmpp import DDPMpp
from sgc_jax.models.mlp import MLPScore
from sgc_jax.models.unet import SeedUNet

MODELS: dict[str, type[nn.Module]] = {
    "unet": SeedUNet,
    "ddpmpp": DDPMpp,
    "mlp": MLPScore,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Module fields that are not architecture settings: set by `get_model` from
# its arguments (num_classes, dtype) or reserved by Flax (parent, name).
_NON_CONFIG_FIELDS = frozenset({"num_classes", "dtype", "parent", "name"})


def config_fields(model_cls: type[nn.Module]) -> dict[str, Any]:
  """Architecture fields of a registered model class and their defaults."""
  return {f.name: f.default for f in dataclasses.fields(model_cls)
          if f.name not in _NON_CONFIG_FIELDS}


def _coerce(where: str, value: Any, default: Any) -> Any:
  """Converts a config value to the type of the field's default, or raises.

  ConfigDict may hold lists where modules want tuples (modules must stay
  hashable for `jax.jit` static arguments), and YAML/CLI overrides may give
  ints for floats; anything else of the wrong type is a config error.
  """
  def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

  if isinstance(default, tuple):
    if not isinstance(value, (list, tuple)) or not all(map(is_int, value)):
      raise ValueError(f"{where}: expected a sequence of ints, got {value!r}")
    return tuple(value)
  if isinstance(default, int):
    if not is_int(value):
      raise ValueError(f"{where}: expected an int, got {value!r}")
    return value
  if isinstance(default, float):
    if not (is_int(value) or isinstance(value, float)):
      raise ValueError(f"{where}: expected a number, got {value!r}")
    return float(value)
  if isinstance(default, str):
    if not isinstance(value, str):
      raise ValueError(f"{where}: expected a string, got {value!r}")
    return value
  # Only reached if a model gains a field of a new type: extend the above.
  raise TypeError(f"{where}: no config coercion for {type(default).__name__} "
                  "fields")


def get_model(model_config: Any, num_classes: int, sde: Any = None) -> nn.Module:
  """Builds the model named by `model_config.name` from its sub-dict.

  Args:
    model_config: ConfigDict (or mapping) laid out as in the module docstring.
    num_classes: number of real classes in the data set.
    sde: the run's `sgc_jax.sde` SDE; needed only with `model.class_gaussian`,
      whose closed-form Gaussian scores depend on alpha(t) and sigma(t).

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: naming the offending field (e.g. "model.name: ...",
      "model.unet.channels: ...") for an unknown model, dtype or field, or a
      value of the wrong type or range.
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes: must be a positive int, got "
                     f"{num_classes!r}")
  name = model_config.get("name")
  if name not in MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; choose one of "
                     f"{sorted(MODELS)}")
  dtype_name = model_config.get("dtype", "float32")
  if dtype_name not in DTYPES:
    raise ValueError(f"model.dtype: unknown dtype {dtype_name!r}; choose one "
                     f"of {sorted(DTYPES)}")

  model_cls = MODELS[name]
  defaults = config_fields(model_cls)
  overrides: Mapping[str, Any] = model_config.get(name) or {}
  kwargs = {}
  for field, value in overrides.items():
    where = f"model.{name}.{field}"
    if field not in defaults:
      raise ValueError(f"{where}: unknown field; valid fields are "
                       f"{sorted(defaults)}")
    kwargs[field] = _coerce(where, value, defaults[field])
  try:
    net = model_cls(num_classes=num_classes, dtype=DTYPES[dtype_name], **kwargs)
  except ValueError as err:
    # Range checks live in the modules; their messages start "field: ".
    raise ValueError(f"model.{name}.{err}") from err
  covariance = model_config.get("class_gaussian", "none")
  if covariance == "none":
    return net
  if covariance not in COVARIANCES:
    raise ValueError(f"model.class_gaussian: unknown {covariance!r}; choose one of "
                     f"{['none', *COVARIANCES]}")
  if sde is None:
    raise ValueError("model.class_gaussian: the class Gaussians need the run's SDE; "
                     "pass sde= to get_model")
  return ClassGaussianSkip(net=net, sde=sde, covariance=covariance)


def has_null_label(model: nn.Module) -> bool:
  """Whether label index `model.num_classes` is a trained null label.

  True for DDPMpp and MLPScore (label table of num_classes + 1 rows), so the
  trainer may drop labels and the same network gives unconditional scores.
  """
  return model.supports_null_label


def init_variables(model: nn.Module, key: jax.Array,
                   image_shape: tuple[int, int, int],
                   num_classes: int) -> dict[str, Any]:
  """Initialises `model` for images of shape (H, W, C).

  Args:
    model: a module from `get_model`.
    key: PRNG key for the parameters (and SeedUNet's fixed constants).
    image_shape: (H, W, C) of one image.
    num_classes: classes of the data; must equal `model.num_classes`, which
      catches a model built for a different data set.

  Returns:
    The variables dict: `params`, plus `batch_stats` and `constants` when the
    model has them.
  """
  if model.num_classes != num_classes:
    raise ValueError(f"num_classes: model has {model.num_classes} classes "
                     f"but the data has {num_classes}")
  if len(image_shape) != 3:
    raise ValueError(f"image_shape: expected (H, W, C), got {image_shape!r}")
  x = jnp.zeros((1, *image_shape), jnp.float32)
  t = jnp.full((1,), 0.5, jnp.float32)
  y = jnp.zeros((1,), jnp.int32)
  # Jitted so that large models initialise in one compiled call instead of
  # op by op.
  init = jax.jit(functools.partial(model.init, train=False))
  return dict(init({"params": key}, x, t, y))


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or of `jax.eval_shape` shapes)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class _ScoreApplication:
  """model output / sigma(t), equal (and hashing equal) for equal networks and SDEs.

  A score_fn's pytree structure holds this object, and `jax.jit` keys its
  cache on that structure: compared by value, two loads of the same network
  share one compilation of every jitted caller (the class scorer, the
  samplers) instead of tracing it again. A bound method compares its object
  by identity, so sigma(t) is held as (object, method name).
  """
  model: nn.Module
  std_owner: Any
  std_name: str

  def __call__(self, variables, x, t, y):
    out = self.model.apply(variables, x, t, y, train=False)
    return out / getattr(self.std_owner, self.std_name)(t)[:, None, None, None]


def make_score_fn(model: nn.Module, variables: Mapping[str, Any],
                  marginal_std: Callable[[jax.Array], jax.Array]) -> Partial:
  """Returns score_fn(x, t, y) = model output / sigma(t), in inference mode.

  Args:
    model: a module from `get_model`.
    variables: all its variable collections (params, batch_stats, constants).
    marginal_std: sigma(t) for times [B] -> [B], e.g. an SDE's `marginal_std`.

  Returns:
    A `jax.tree_util.Partial` of x [B,H,W,C], t [B], y [B] giving float32
    scores [B,H,W,C]. Being a pytree whose leaves are `variables`, it can be
    passed straight into jitted functions (the likelihood engine, samplers):
    the parameters are traced arguments, not constants compiled into the
    program. BatchNorm uses running averages and dropout is off, so each
    image's score is independent of its batch-mates.
  """
  if inspect.ismethod(marginal_std):
    owner, name = marginal_std.__self__, marginal_std.__name__
  else:
    owner, name = marginal_std, "__call__"
  return Partial(_ScoreApplication(model, owner, name), variables)
