"""The one place that talks to orbax: save, keep K, and resume the latest step.

A checkpoint holds the train state (restored exactly into an abstract target,
so shardings and dtypes come back as they were) and the data iterator's state
as JSON, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager for `workdir/checkpoints` that keeps the `max_to_keep` latest steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  # Registered handlers let `item_metadata` read a checkpoint's tree before restoring it.
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_state: dict | None = None, *, wait: bool = False) -> None:
  """Saves `state` (a pytree of arrays) and the JSON-able `data_state` at `step`."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  manager.save(step, args=ocp.args.Composite(**items))
  if wait:
    manager.wait_until_finished()


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  return manager.latest_step()


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None,
            *, with_data_state: bool = True) -> tuple[Any, dict | None]:
  """Restores (state, data_state) at `step` (default: latest) into `abstract_state`.

  `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with shardings), e.g.
  from `jax.eval_shape`; passing it is what makes the restore exact.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {manager.directory}")
  _check_structure(manager, step, abstract_state)
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if with_data_state and "data" in (manager.item_metadata(step) or {}):
    items["data"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], (restored["data"] if "data" in items else None)


def restore_saved(manager: ocp.CheckpointManager, step: int, sharding) -> dict:
  """The state saved at `step` as nested dicts and lists, every array placed with `sharding`.

  The target is the checkpoint's own tree (from its metadata), so no model or
  optimizer has to be rebuilt to shape it: what scoring restores without
  knowing how the run was trained.
  """
  saved = manager.item_metadata(step)["state"]
  tree = getattr(saved, "tree", saved)
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          tree)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      abstract)))
  return restored["state"]


def _leaf_paths(tree: Any) -> set[str]:
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_structure(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """Raises a short, specific error when the checkpoint holds a different model."""
  metadata = manager.item_metadata(step)
  saved = metadata.get("state") if metadata is not None else None
  if saved is not None:
    check_same_structure(f"{manager.directory}/{step}", saved, abstract_state)


def check_same_structure(where: str, saved: Any, wanted: Any) -> None:
  """Raises naming a few differing entries when the trees `saved` and `wanted` differ.

  Orbax's own message dumps both trees in full; this names `where`, a few
  differing entries, and the usual cause.
  """
  stored, wanted = _leaf_paths(saved), _leaf_paths(wanted)
  if stored == wanted:
    return
  missing, unexpected = sorted(wanted - stored), sorted(stored - wanted)
  raise ValueError(
      f"{where}: the checkpoint holds a different model than the config "
      f"builds (config lacks {len(unexpected)} saved entries, e.g. {unexpected[:3]}; checkpoint "
      f"lacks {len(missing)} expected ones, e.g. {missing[:3]}). Check model.name, its "
      "architecture fields and model.class_gaussian against the run that trained it.")
