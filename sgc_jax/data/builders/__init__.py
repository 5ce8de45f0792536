"""Registry of the TFDS builders sgc_jax knows, by the name configs use."""
from __future__ import annotations

from sgc_jax.data.builders.cbis_ddsm import CbisDdsm
from sgc_jax.data.builders.digits import Digits
from sgc_jax.data.builders.inbreast import Inbreast
from sgc_jax.data.builders.vindr_mammo import VindrMammo

BUILDERS = {
    "digits": Digits,
    "cbis_ddsm": CbisDdsm,
    "inbreast": Inbreast,
    "vindr_mammo": VindrMammo,
}


def get_builder_class(name: str):
  """The builder class registered under `name` (a config's `data.name`)."""
  try:
    return BUILDERS[name]
  except KeyError:
    raise ValueError(f"data.name: unknown dataset {name!r}; choose one of {sorted(BUILDERS)}") from None
