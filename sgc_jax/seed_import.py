"""Import the seed's PyTorch weights into the Flax port (`sgc-import-seed`).

The seed (sushmitaSARKER/SGC_for_Medical_Image_Classification) saves the
`state_dict` of its `UNetScoreModel_conditional`, usually wrapped in
`nn.DataParallel`, so every key may carry a `module.` prefix. `SeedUNet`
names its submodules after the reference's attributes, so each Flax variable
has exactly one PyTorch tensor:

    conv1.double_conv.{0,1,3,4}             -> conv1/{Conv_0,BatchNorm_0,Conv_1,BatchNorm_1}
    down{i}.maxpool_conv.1.double_conv.*    -> down{i}/...
    up{i}.up                                -> up{i}_up     (IOHW -> HWIO, flipped)
    up{i}.conv.double_conv.*                -> up{i}_conv/...
    dense{i}.dense, t_dense{i}.dense        -> dense{i}, t_dense{i}     (transposed)
    gnorm{i}, t_gnorm{i}                    -> gnorm{i}, t_gnorm{i}
    embed.0.W, embed.1                      -> constants embed_fourier/W, embed
    label_emb, outc.conv                    -> label_emb, outc

Conv weights OIHW become HWIO kernels; BatchNorm `weight`/`bias` become
`scale`/`bias` and `running_mean`/`running_var` the `batch_stats`;
`num_batches_tracked` is not used at inference and is dropped. The network's
shape (widths, input channels, classes, embedding width) is read from the
tensors and must match the config, so that `sgc-evaluate` with the same config
builds the same network. The result is a step-0 checkpoint in the workdir,
restored like any trained one (`train_state.restore_inference_variables`).
"""
from __future__ import annotations

import itertools
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax import checkpointing, models, run_dir, train_state
from sgc_jax import sde as sde_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import records
from sgc_jax.data.builders import get_builder_class

# nn.DataParallel's prefix on every key of the wrapped model's state_dict.
DATA_PARALLEL_PREFIX = "module."
# BatchNorm's update counter: a training-time buffer with no Flax counterpart.
_UNUSED_SUFFIX = "num_batches_tracked"
# Positions of the layers inside the reference's `double_conv` nn.Sequential
# (1 and 4 are its BatchNorms, 2 and 5 its parameter-free ReLUs).
_DOUBLE_CONV_INDEX = {"Conv_0": "0", "BatchNorm_0": "1", "Conv_1": "3", "BatchNorm_1": "4"}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var", "W": "W"}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch `state_dict` (`.pth`/`.pt`) into float32 numpy arrays.

  Accepts a bare state_dict or a dict holding one under "state_dict" or
  "model" (common training-script wrappers); needs PyTorch (`pip install
  sgc_jax[torch]`). Tensors are read with `weights_only=True`: no code from
  the file runs.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("reading a PyTorch checkpoint needs PyTorch: pip install "
                      "'sgc_jax[torch]' (a CPU build is enough)") from err
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--checkpoint: no file {path}")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # torch raises many types for unreadable files
    raise ValueError(f"--checkpoint: {path} is not a readable PyTorch file ({err})") from err
  for wrapper in ("state_dict", "model"):
    if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
      loaded = loaded[wrapper]
  if not isinstance(loaded, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in loaded.values()):
    raise ValueError(f"--checkpoint: {path} holds no state_dict (a mapping of names to "
                     "tensors); save the model with torch.save(model.state_dict(), path)")
  return {k: v.detach().cpu().float().numpy() for k, v in loaded.items()}


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes nn.DataParallel's `module.` prefix when every key has it."""
  if state_dict and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _required(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f"state_dict: missing key {key!r}; is this the seed's "
                     "UNetScoreModel_conditional?")
  return np.asarray(state_dict[key])


def architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The network's shape read from its tensors (after `strip_prefix`).

  Returns:
    {"channels": widths per level, "num_channels": input channels,
     "num_classes": label embedding rows, "embed_dim": embedding width}.
  """
  first = _required(state_dict, "conv1.double_conv.0.weight")
  channels = [first.shape[0]]
  for level in itertools.count(2):
    key = f"down{level}.maxpool_conv.1.double_conv.0.weight"
    if key not in state_dict:
      break
    channels.append(np.shape(state_dict[key])[0])
  return {"channels": tuple(int(c) for c in channels), "num_channels": int(first.shape[1]),
          "num_classes": int(_required(state_dict, "label_emb.weight").shape[0]),
          "embed_dim": int(_required(state_dict, "embed.1.weight").shape[0])}


def _torch_module(flax_path: tuple[str, ...]) -> str:
  """Reference module name of a Flax module path, e.g. ('down2', 'Conv_1') -> 'down2...3'."""
  head, rest = flax_path[0], flax_path[1:]
  if (match := re.fullmatch(r"up(\d+)_(up|conv)", head)):
    head = f"up{match[1]}.{match[2]}"
  elif re.fullmatch(r"down\d+", head):
    head = f"{head}.maxpool_conv.1"
  elif re.fullmatch(r"(t_)?dense\d+", head):
    head = f"{head}.dense"
  elif head == "embed":
    head = "embed.1"
  elif head == "embed_fourier":
    head = "embed.0"
  elif head == "outc":
    head = "outc.conv"
  if rest:  # a DoubleConv's layer
    return f"{head}.double_conv.{_DOUBLE_CONV_INDEX[rest[0]]}"
  return head


def _to_flax(value: np.ndarray, flax_leaf: tuple[str, ...]) -> np.ndarray:
  """Converts one reference tensor to the layout of the Flax leaf at `flax_leaf`."""
  if flax_leaf[-1] != "kernel":
    return value
  if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
    return value.T
  if re.fullmatch(r"up\d+_up", flax_leaf[0]):
    # ConvTranspose2d (in, out, h, w) -> HWIO, flipped: the Flax convention
    # places tap (a, b) at output offset (1-a, 1-b), PyTorch at (a, b).
    return value.transpose(2, 3, 0, 1)[::-1, ::-1]
  return value.transpose(2, 3, 1, 0)  # Conv2d OIHW -> HWIO


def to_flax_variables(state_dict: Mapping[str, Any], model: Any,
                      image_channels: int) -> dict[str, Any]:
  """The Flax variables of `model` (a `SeedUNet`) holding the reference's tensors.

  Args:
    state_dict: the reference's state_dict, numpy arrays (`module.` prefix allowed).
    model: the `SeedUNet` to fill; its widths must be the state_dict's.
    image_channels: input channels of the images the model sees.

  Returns:
    {"params", "batch_stats", "constants"} of float32 numpy arrays.

  Raises:
    ValueError: naming every key the state_dict lacks or has in excess, or the
      first key whose shape differs from the one `model` needs.
  """
  state_dict = strip_prefix(state_dict)
  depth = len(model.channels)
  shape = (2 ** (depth - 1), 2 ** (depth - 1), image_channels)
  abstract = jax.eval_shape(
      lambda key: models.init_variables(model, key, shape, model.num_classes),
      jax.random.key(0))
  wanted = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = tuple(k.key for k in path)
    collection, module, leaf_name = names[0], names[1:-1], names[-1]
    torch_key = f"{_torch_module(module)}.{_LEAF_NAMES[leaf_name]}"
    wanted[torch_key] = (names, leaf.shape)
  present = {k for k in state_dict if not k.endswith(_UNUSED_SUFFIX)}
  missing, unexpected = sorted(set(wanted) - present), sorted(present - set(wanted))
  if missing or unexpected:
    raise ValueError(
        f"state_dict: does not match the seed U-Net with channels={model.channels}: "
        f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected keys "
        f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  variables: dict[str, Any] = {}
  for torch_key, (names, expected) in wanted.items():
    value = _to_flax(np.asarray(state_dict[torch_key], np.float32), names[1:])
    if value.shape != tuple(expected):
      raise ValueError(f"state_dict: {torch_key!r} has shape {np.shape(state_dict[torch_key])}, "
                       f"which does not give the {tuple(expected)} that {'/'.join(names)} needs")
    node = variables
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = np.ascontiguousarray(value)
  return variables


def _check_config(config, arch: Mapping[str, Any]) -> None:
  """Raises naming the config field that builds a network other than the state_dict's."""
  def mismatch(field, configured, stored, flag_value):
    return ValueError(f"{field}: the config has {configured!r} but the checkpoint's network "
                      f"has {stored!r}; pass --config.{field}={flag_value}")

  if config.model.name != "unet":
    raise ValueError(f"model.name: the seed's network is the 'unet', the config has "
                     f"{config.model.name!r}")
  if config.model.get("class_gaussian", "none") != "none":
    raise ValueError("model.class_gaussian: the seed's network has no class-Gaussian skip; "
                     "set it to 'none'")
  unet = models.config_fields(models.MODELS["unet"])
  unet.update(config.model.get("unet") or {})
  channels = tuple(unet["channels"])
  if channels != arch["channels"]:
    raise mismatch("model.unet.channels", channels, arch["channels"],
                   ",".join(map(str, arch["channels"])))
  if unet["norm"] != "batch":
    raise mismatch("model.unet.norm", unet["norm"], "batch", "batch")
  if unet["embed_dim"] != arch["embed_dim"]:
    raise ValueError(f"model.unet.embed_dim: the config has {unet['embed_dim']} but the "
                     f"checkpoint's network has {arch['embed_dim']}; set "
                     f"config.model.unet.embed_dim = {arch['embed_dim']} in the config file")
  if config.data.num_channels != arch["num_channels"]:
    raise mismatch("data.num_channels", config.data.num_channels, arch["num_channels"],
                   arch["num_channels"])
  num_classes = config.data.get("num_classes")
  if num_classes is not None and num_classes != arch["num_classes"]:
    raise ValueError(f"data.num_classes: the dataset {config.data.name!r} has {num_classes} "
                     f"classes but the checkpoint's label embedding has {arch['num_classes']}")


def import_seed(state_dict: Mapping[str, Any], config, workdir: str) -> dict[str, Any]:
  """Writes the reference's weights as a step-0 checkpoint of `config` in `workdir`.

  `sgc-evaluate --config C --workdir W` and `sgc_jax.load(W)` (which reads the
  `config.json` written here) then score with them exactly as with a network
  trained here; `sgc-train` would fine-tune from them. The dataset's class
  count is checked against the label embedding; its records need not exist.

  Args:
    state_dict: the reference's state_dict as numpy arrays (`load_state_dict`).
    config: the run's config (model.name "unet", widths and channels as stored).
    workdir: a directory without checkpoints.

  Returns:
    A summary: the architecture, the parameter count and the checkpoint path.
  """
  state_dict = strip_prefix(state_dict)
  arch = architecture(state_dict)
  # The dataset's description, not its records: an import needs no converted data, and the
  # spec stored with the checkpoint lets `sgc_jax.load` and `sgc-score` do without them too.
  data = config.data
  builder = records.get_builder(get_builder_class(data.name), data.get("data_dir") or None,
                                config=data.get("builder_config") or None)
  spec = run_dir.ModelSpec.from_builder(builder, data)
  config = validate_config(config, spec=spec)
  _check_config(config, arch)
  manager = checkpointing.make_manager(workdir)
  if checkpointing.latest_step(manager) is not None:
    raise FileExistsError(f"--workdir: {workdir} already holds checkpoints; import into an "
                          "empty workdir")
  model = models.get_model(config.model, arch["num_classes"], sde_lib.from_config(config.sde))
  variables = to_flax_variables(state_dict, model, arch["num_channels"])
  tx, _ = train_state.make_optimizer(config.training, steps_per_epoch=1)
  state = train_state.state_from_variables(config, tx, jax.tree.map(jnp.asarray, variables))
  checkpointing.save(manager, 0, state, wait=True)
  # What `sgc_jax.load(workdir)` reads back.
  run_dir.write_config(config, workdir)
  run_dir.write_model_spec(spec, workdir)
  return {**arch, "params": models.count_params(variables["params"]),
          "checkpoint": os.path.join(manager.directory, "0")}
