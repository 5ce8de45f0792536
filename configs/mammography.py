"""The seed's mammography settings, shared by the CBIS-DDSM, INbreast and VinDr configs.

Sarker et al. (ISBI 2025), released code: 384x384 inputs with 3 identical
channels in [0, 1], random horizontal and vertical flips, the class-conditional
U-Net (8.2 M parameters), VP SDE (beta 0.1..20), Adam 1e-4, batch 32, learning
rate x0.2 every 20 epochs, no EMA, exact probability-flow likelihood (eps 1e-5,
RK45-class adaptive solver at rtol = atol = 1e-5, one Gaussian probe; scored here
with the cheaper and more accurate default of configs/default.py instead).
"""
from configs import default


def seed_config(dataset: str, builder_config: str, num_train_images: int, epochs: int):
  """The seed's recipe for `dataset` records made by `sgc-convert`.

  Args:
    dataset: registered TFDS builder name.
    builder_config: its builder config (resolution, crop).
    num_train_images: images in the train split, to turn epochs into steps.
    epochs: training epochs.
  """
  config = default.get_config()
  config.data.name = dataset
  config.data.builder_config = builder_config
  config.data.bit_depth = 16
  config.data.range = (0.0, 1.0)
  config.data.num_channels = 3
  config.data.random_flip = (True, True)
  config.data.validation_fraction = 0.1

  config.model.name = "unet"
  config.model.unet.channels = (32, 64, 128, 256, 512)

  config.training.batch_size = 32
  config.training.learning_rate = 1e-4
  config.training.lr_schedule = "step"
  config.training.lr_decay_every_epochs = 20
  config.training.lr_decay_factor = 0.2
  config.training.num_steps = epochs * max(1, num_train_images // 32)
  config.training.ema_decay = 0.0
  config.training.log_every = 100
  config.training.checkpoint_every = 2000

  config.eval.batch_size = 8
  # Scoring follows the measurements, not the seed: default.py's expint3, 27 steps, one fresh
  # Rademacher probe per step. The seed's own setting (about 17x the network passes):
  #   --config.eval.solver=dopri5 --config.eval.adaptive=True --config.eval.probe=gaussian
  #   --config.eval.resample_probes=False
  config.eval.eps = 1e-5
  config.eval.num_samples = 2

  config.baseline.width = 64
  config.baseline.num_steps = 5000
  config.baseline.batch_size = 32
  return config
