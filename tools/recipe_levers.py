"""What makes a score network classify by its own likelihood: one training recipe lever at a time.

    flock /tmp/sgc_heavy.lock python tools/recipe_levers.py --workdir /tmp/recipe_levers \
        --variants seed,ema_cosine_8k
    # writes tools/results/recipe_levers.json (one entry per variant, kept as each finishes)

Each variant is a set of overrides of a config: `configs/digits_unet.py:seed`
(the seed U-Net and recipe scaled to a CPU, on 16x16 digits; its default
recipe is the ema_cosine_8k row) or `configs/digits.py` (the demo's residual
MLP on 8x8 digits). It is trained (resuming from its own
checkpoints), then the whole test split is scored by the exact
probability-flow likelihood with the variant's `eval` block. The JSON records,
per variant, the overrides, every training and evaluation setting that
changes the numbers, the training seconds and the machine's load average
(timings count only when the load stayed near the 2 cores' idle), the git
commit, and the ODE's accuracy, balanced accuracy, AUC and bits/dim. A
finished variant is skipped on a rerun, so the study can run in parts.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sgc_jax  # pylint: disable=wrong-import-position
from configs import digits, digits_unet  # pylint: disable=wrong-import-position
# pylint: disable=wrong-import-position
from sgc_jax import api, classifier, metrics, precise_bn, provenance, trainer
from sgc_jax.data import reader

# Every U-Net variant starts from the seed's recipe, so each row is one lever away from it.
_BASES = {"digits": digits.get_config, "digits_unet_seed": lambda: digits_unet.get_config("seed")}
_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        "recipe_levers.json")

# The seed's recipe as configs/digits_unet.py ships it, scored by the fast default.
_FAST_EVAL = {"eval.solver": "expint3", "eval.adaptive": False, "eval.num_steps": 27,
              "eval.grid": "logsnr", "eval.probe": "rademacher", "eval.num_probes": 1,
              "eval.resample_probes": True}
_LONG = {"training.batch_size": 64, "training.lr_schedule": "cosine",
         "training.warmup_steps": 200, "training.ema_decay": 0.999}

_FINE_TUNE = {**_LONG, "init_from": "ema_cosine_16k_range11", "data.range": (-1.0, 1.0),
              "training.num_steps": 2000, "training.learning_rate": 2e-4,
              "training.warmup_steps": 100, "training.checkpoint_every": 1000}

# The demo's MLP as configs/digits.py shipped it before it took weight decay (0.2), so that
# each MLP row stays one lever away from the same recipe: 3 residual blocks, no weight decay,
# 6,000 steps.
_MLP = {"base": "digits", "model.mlp.depth": 3, "training.weight_decay": 0.0,
        "training.num_steps": 6000, "training.checkpoint_every": 3000}
# The same with weight decay 0.2, and with a fourth block too (configs/digits.py's default now).
_MLP_WD02 = {**_MLP, "training.weight_decay": 0.2}
_MLP_DEEP = {**_MLP_WD02, "model.mlp.depth": 4}
_FINE_TUNE_MLP = {**_MLP, "init_from": "mlp_6k", "training.num_steps": 2000,
                  "training.learning_rate": 4e-4, "training.warmup_steps": 100,
                  "training.checkpoint_every": 1000}

VARIANTS = {
    # The shipped recipe (2,000 steps of batch 32, x0.2 every 20 epochs, no EMA).
    "seed": {**_FAST_EVAL},
    # Training length, cosine schedule with warm-up, EMA.
    "ema_cosine_8k": {**_FAST_EVAL, **_LONG, "training.num_steps": 8000,
                      "training.checkpoint_every": 2000},
    # The same with the data in [-1, 1] instead of the seed's [0, 1].
    "ema_cosine_8k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 8000,
                              "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0)},
    # Twice as long (800 epochs), data in [-1, 1].
    "ema_cosine_16k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 16000,
                               "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0)},
    # Likelihood-weighted loss with t importance-sampled from g^2/sigma^2 (Song et al. 2021):
    # about half the training times fall below t = 3e-3, where the 8-bit bins and the thin
    # directions of the upsampled images are resolved and most of the ODE's log p accrues.
    "ema_cosine_8k_range11_is": {**_FAST_EVAL, **_LONG, "training.num_steps": 8000,
                                 "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                 "training.importance_sampling": True},
    # 3.5x as long (1,386 epochs), what a 20-minute budget on the 2 cores holds.
    "ema_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                               "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0)},
    # 36,000 steps, 1,782 epochs: meant as what 20 minutes hold on the AVX-512 Xeon host, by
    # the pace of ema_cosine_28k_range11_4probes' retrain (28,000 in 905 s); it ran at 26
    # steps/s, not 31, and took 1,365 s.
    "ema_cosine_36k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 36000,
                               "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0)},
    # Twice the updates at half the batch, in about the same wall time (the 2 cores train
    # about as many images per second at batch 32 as at 64): 48,000 x 32, 1,188 epochs.
    "b32_cosine_48k_range11": {**_FAST_EVAL, **_LONG, "training.batch_size": 32,
                               "training.num_steps": 48000, "training.checkpoint_every": 8000,
                               "data.range": (-1.0, 1.0)},
    # Decoupled weight decay (what lifted the MLP, mlp_6k_wd), in 26,000 steps: what fits the
    # 20-minute budget (28,000 took 20.6 min).
    "wd_cosine_26k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 26000,
                              "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                              "training.weight_decay": 0.05},
    # Dropout 0.1 inside every DoubleConv (DDPM's rate; not in the seed) at the default's
    # 28,000 steps: the default model classifies its training images at 0.997 and the test
    # split at 0.95 (ema_cosine_36k_range11, scored on 360 training images ad hoc), so the
    # density memorises; weight decay did not help this normalised network.
    "drop01_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                  "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                  "model.unet.dropout": 0.1},
    # Random shifts by 0 or +-2 pixels in each axis (a whole source pixel of the 2x-upsampled
    # 8x8 digits, so no new interpolation phase) at the default's 28,000 steps: more distinct
    # training images against the memorisation neither weight decay nor dropout held off.
    "shift2_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                  "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                  "data.random_shift": (2, 2)},
    # A longer EMA, 0.9995 (about the last 2,000 steps, 7 % of the run, against 1,000), at the
    # default's 28,000 steps: the default fits its training images (1.000) better than held-out
    # ones (0.972 validation, 0.956 test; ema_cosine_28k_range11_fit); a smoother average of
    # the last weights may fit them less.
    "ema9995_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                   "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                   "training.ema_decay": 0.9995},
    # GroupNorm instead of BatchNorm inside every DoubleConv (model.unet.norm = "group"), at
    # the default's 28,000 steps: with BatchNorm an image's training output depends on its
    # batch-mates' noise levels (one batch mixes every t), and scoring runs another function,
    # the running averages; GroupNorm computes one function of (x, t, y) in both.
    "gn_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                              "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                              "model.unet.norm": "group"},
    # The same with another seed (initial weights, batches, noise): is GroupNorm's gain
    # (0.972 against 0.956-0.958 for BatchNorm, one probe) one training's luck?
    "gn_cosine_28k_range11_seed1": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                    "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                    "model.unet.norm": "group", "seed": 1},
    # The default recipe (BatchNorm) at a second seed, to be scored three ways: one probe,
    # 4 probes and 4 dequantizations (the last lifted both GroupNorm trainings).
    "ema_cosine_28k_range11_seed1": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                     "training.checkpoint_every": 4000,
                                     "data.range": (-1.0, 1.0), "seed": 1},
    # The default recipe, untouched, on the same digits upsampled to 32x32 (4x the pixels and
    # the multiply-adds, 1,024 dimensions): does it carry to a larger image without retuning?
    "ema_cosine_28k_range11_32px": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                    "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                                    "data.builder_config": "32x32"},
    # Half the width everywhere ((8, 16, 32), about a quarter of the multiply-adds): does a
    # narrower network at the same steps lose accuracy, or buy steps within the budget?
    "w8_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                              "training.checkpoint_every": 4000, "data.range": (-1.0, 1.0),
                              "model.unet.channels": (8, 16, 32)},
    # The demo MLP's optimiser settings (peak learning rate 2e-3 after 1,000 warm-up steps,
    # gradients clipped to norm 1) at the 28,000 steps of ema_cosine_28k_range11: the 2 cores
    # train about 1,500 images a second at batch 64 whatever XLA:CPU's flags (oneDNN, XNNPACK,
    # 512-bit vectors: within 5 %) and fewer at batch 128 or 256, so a budget of 20 minutes
    # holds no more steps, and a faster start is the lever left.
    "lr2e3_clip_cosine_28k_range11": {**_FAST_EVAL, **_LONG, "training.num_steps": 28000,
                                      "training.checkpoint_every": 4000,
                                      "data.range": (-1.0, 1.0), "training.learning_rate": 2e-3,
                                      "training.warmup_steps": 1000,
                                      "training.grad_clip_norm": 1.0},
    # Fine-tunes of ema_cosine_16k_range11's EMA (training.init_from): 2,000 more steps at a
    # fifth of the learning rate, with and without second-order score matching (Lu et al.
    # 2022; sgc_jax/losses.py), so that the second row is one lever away from the first.
    "ft2k_16k_range11": {**_FAST_EVAL, **_FINE_TUNE},
    "ft2k_16k_range11_dsm2": {**_FAST_EVAL, **_FINE_TUNE, "training.second_order_weight": 1.0},
    # The same fine-tune of the longest run's EMA (ema_cosine_36k_range11), about 80 s more.
    "ft2k_36k_range11": {**_FAST_EVAL, **_FINE_TUNE, "init_from": "ema_cosine_36k_range11"},
    # The same two fine-tunes of the demo's MLP (mlp_6k), at its batch of 128.
    "ft2k_mlp_6k": {**_FINE_TUNE_MLP},
    "ft2k_mlp_6k_dsm2": {**_FINE_TUNE_MLP, "training.second_order_weight": 1.0},
    # The seed's three identical channels instead of one (two thirds of the dimensions copies).
    "ema_cosine_8k_3ch": {**_FAST_EVAL, **_LONG, "training.num_steps": 8000,
                          "training.checkpoint_every": 2000, "data.num_channels": 3},
    # The demo's MLP recipe (configs/digits.py: 6,000 steps of batch 128, 594 epochs) without
    # weight decay, and twice as long.
    "mlp_6k": {**_MLP},
    "mlp_12k": {**_MLP, "training.num_steps": 12000,
                "training.checkpoint_every": 6000},
    # The demo's recipe with the likelihood-weighted, importance-sampled loss.
    "mlp_6k_is": {**_MLP, "training.importance_sampling": True},
    # Regularising the MLP against memorising (mlp_12k): decoupled weight decay (AdamW, on
    # weight matrices) 0.05 at the demo's length and at twice it, then 0.1 to 0.5; twice
    # the width; a longer EMA.
    "mlp_6k_wd": {**_MLP, "training.weight_decay": 0.05},
    "mlp_12k_wd": {**_MLP, "training.weight_decay": 0.05,
                   "training.num_steps": 12000, "training.checkpoint_every": 6000},
    "mlp_6k_wide": {**_MLP, "model.mlp.hidden": 512},
    "mlp_6k_ema9995": {**_MLP, "training.ema_decay": 0.9995},
    "mlp_6k_wd01": {**_MLP, "training.weight_decay": 0.1},
    "mlp_6k_wd02": {**_MLP_WD02},
    "mlp_6k_wd03": {**_MLP, "training.weight_decay": 0.3},
    "mlp_6k_wd05": {**_MLP, "training.weight_decay": 0.5},
    # Weight decay 0.2 with two other seeds (initialisation, batches, noise): how far the
    # accuracy moves between runs of one recipe ...
    "mlp_6k_wd02_seed1": {**_MLP_WD02, "seed": 1},
    "mlp_6k_wd02_seed2": {**_MLP_WD02, "seed": 2},
    # ... and without weight decay, so that the two recipes are compared seed for seed.
    "mlp_6k_seed1": {**_MLP, "seed": 1},
    "mlp_6k_seed2": {**_MLP, "seed": 2},
    # Around the demo's recipe (weight decay 0.2), one lever each: fewer steps (396 epochs),
    # twice the width or one more block (what weight decay may now keep from memorising), half
    # the peak learning rate.
    "mlp_4k_wd02": {**_MLP_WD02, "training.num_steps": 4000, "training.checkpoint_every": 2000},
    "mlp_6k_wd02_wide": {**_MLP_WD02, "model.mlp.hidden": 512},
    "mlp_6k_wd02_deep": {**_MLP_DEEP},
    "mlp_6k_wd02_lr1e3": {**_MLP_WD02, "training.learning_rate": 1e-3},
    # One block more (mlp_6k_wd02_deep) with the two other seeds.
    "mlp_6k_wd02_deep_seed1": {**_MLP_DEEP, "seed": 1},
    "mlp_6k_wd02_deep_seed2": {**_MLP_DEEP, "seed": 2},
    # 4,000 steps lost 0.05: are 9,000 or 12,000 better, now that weight decay holds off the
    # memorising that twice the steps showed without it (mlp_12k)?
    "mlp_9k_wd02": {**_MLP_WD02, "training.num_steps": 9000},
    "mlp_12k_wd02": {**_MLP_WD02, "training.num_steps": 12000, "training.checkpoint_every": 6000},
    # The fourth block at the 9,000 steps that lifted three blocks (mlp_9k_wd02), seeds 0-2.
    "mlp_9k_wd02_deep": {**_MLP_DEEP, "training.num_steps": 9000},
    "mlp_9k_wd02_deep_seed1": {**_MLP_DEEP, "training.num_steps": 9000, "seed": 1},
    "mlp_9k_wd02_deep_seed2": {**_MLP_DEEP, "training.num_steps": 9000, "seed": 2},
    # And at 12,000 steps (mlp_12k_wd02's length), seeds 0-2.
    "mlp_12k_wd02_deep": {**_MLP_DEEP, "training.num_steps": 12000,
                          "training.checkpoint_every": 6000},
    "mlp_12k_wd02_deep_seed1": {**_MLP_DEEP, "training.num_steps": 12000,
                                "training.checkpoint_every": 6000, "seed": 1},
    "mlp_12k_wd02_deep_seed2": {**_MLP_DEEP, "training.num_steps": 12000,
                                "training.checkpoint_every": 6000, "seed": 2},
}
# Variants that score another variant's trained model with its BatchNorm statistics
# recomputed under the EMA parameters (sgc_jax/precise_bn.py), 32 batches.
PRECISE_BN = {f"{name}_precise_bn": name for name in
              ("ema_cosine_8k", "ema_cosine_8k_range11")}
_PRECISE_BN_BATCHES = 32
# Variants that score another variant's trained model with other `eval` settings: does the
# solver's discretisation still cost accuracy on the best-trained model?
# And does probe noise, which did not limit the weaker models (0.69 with one probe, 0.70 with
# 16), limit the default recipe's model: 4 fresh Rademacher probes per step, the MLP's setting.
RESCORED = {"b32_cosine_48k_range11_54steps": ("b32_cosine_48k_range11", {"eval.num_steps": 54}),
            "ema_cosine_28k_range11_4probes": ("ema_cosine_28k_range11", {"eval.num_probes": 4}),
            # The best-measured model (EMA 0.9995) with twice the solver steps and with 4
            # probes: on one trained model, so the scorer's settings alone differ.
            "ema9995_cosine_28k_range11_54steps": ("ema9995_cosine_28k_range11",
                                                   {"eval.num_steps": 54}),
            "ema9995_cosine_28k_range11_4probes": ("ema9995_cosine_28k_range11",
                                                   {"eval.num_probes": 4}),
            # 4 probes lifted it (0.961 -> 0.967): does the probe noise go on costing accuracy?
            "ema9995_cosine_28k_range11_8probes": ("ema9995_cosine_28k_range11",
                                                   {"eval.num_probes": 8}),
            "ema9995_cosine_28k_range11_16probes": ("ema9995_cosine_28k_range11",
                                                    {"eval.num_probes": 16}),
            "gn_cosine_28k_range11_4probes": ("gn_cosine_28k_range11", {"eval.num_probes": 4}),
            "gn_cosine_28k_range11_seed1_4probes": ("gn_cosine_28k_range11_seed1",
                                                    {"eval.num_probes": 4}),
            # The ODE started later, on the same two GroupNorm models: with eps = 1e-5 the flow
            # runs down to sigma = 0.001, well inside one 8-bit bin (2/255 = 0.008 in [-1, 1]),
            # where the density resolves the uniform dequantization noise, which carries no class;
            # sigma(1e-4) = 0.003 is that noise's std, sigma(1e-3) = 0.010 a whole bin, sigma(3e-3)
            # = 0.020 two (i-DODE starts where sigma matches the bin). log p_t0(x|y) is still an
            # exact density of x: the model's marginal at t0, the data smoothed by that noise.
            # And earlier, eps = 1e-6 (sigma = 3e-4), below the training's smallest time (1e-5).
            **{f"gn_cosine_28k_range11{seed}_eps{tag}": (f"gn_cosine_28k_range11{seed}",
                                                        {"eval.eps": eps})
               for seed in ("", "_seed1") for tag, eps in (("1e6", 1e-6), ("1e4", 1e-4),
                                                          ("1e3", 1e-3), ("3e3", 3e-3))},
            # Four dequantizations of each test image, each with its own probe, log-likelihoods
            # averaged (eval.num_dequantizations), against 4 probes on one: ad hoc, the second
            # seed's model classified 0.947, 0.956, 0.956 and 0.956 on four single draws.
            **{f"gn_cosine_28k_range11{seed}_4deq": (f"gn_cosine_28k_range11{seed}",
                                                    {"eval.num_dequantizations": 4})
               for seed in ("", "_seed1")},
            "ema_cosine_28k_range11_seed1_4probes": ("ema_cosine_28k_range11_seed1",
                                                     {"eval.num_probes": 4}),
            "ema_cosine_28k_range11_seed1_4deq": ("ema_cosine_28k_range11_seed1",
                                                  {"eval.num_dequantizations": 4}),
            # The same 4 probes on the default recipe's model retrained with the fit check
            # (ema_cosine_28k_range11_fit, the EPYC host): probes against one model, paired.
            "ema_cosine_28k_range11_refit_4probes": ("ema_cosine_28k_range11",
                                                     {"eval.num_probes": 4})}
# Variants that score another variant's model on the images it trained on (the first 360)
# and on the held-out validation part of the train split, beside the test split: how far the
# density fits its own training images better than new ones.
FIT_CHECKED = {"ema_cosine_28k_range11_fit": "ema_cosine_28k_range11",
               "ema9995_cosine_28k_range11_fit": "ema9995_cosine_28k_range11",
               "gn_cosine_28k_range11_fit": "gn_cosine_28k_range11"}
_FIT_IMAGES = 360


def trained_variant(name: str) -> str:
  """The variant whose trained run `name` scores (itself, unless it rescores another)."""
  return PRECISE_BN.get(name) or FIT_CHECKED.get(name) or RESCORED.get(name, (name,))[0]


def eval_overrides(name: str) -> dict:
  """The `eval` settings `name` scores with on top of its trained variant's ({} for most)."""
  return RESCORED.get(name, (name, {}))[1]


def variant_config(name: str, data_dir: str = "", workdir: str = ""):
  """The variant's config (`base`, default the seed U-Net recipe) with its overrides.

  A fine-tune (`init_from`: another variant) starts from that variant's run in `workdir`.
  """
  overrides = {**VARIANTS[trained_variant(name)], **eval_overrides(name)}
  config = _BASES[overrides.pop("base", "digits_unet_seed")]()
  init_from = overrides.pop("init_from", "")
  config.update_from_flattened_dict(overrides)
  if init_from:
    config.training.init_from = os.path.join(workdir, init_from)
  config.eval.max_examples = 0
  if data_dir:
    config.data.data_dir = data_dir
  return config


def score_test_split(trained, batch_size: int = 120) -> dict:
  """The exact-ODE metrics of `trained` on its test split (uniform prior, no temperature)."""
  return score_source(trained, trained.builder.as_data_source(split="test"), batch_size)


def score_fit(trained) -> dict:
  """The exact-ODE metrics on the first training images the run trained on, and on the
  validation part of the train split it held out (`reader.training_sources`)."""
  train, validation = reader.training_sources(trained.builder, trained.config.data,
                                              seed=trained.config.seed)
  first = reader.SubsetSource(train, np.arange(min(_FIT_IMAGES, len(train))))
  return {"train": score_source(trained, first), "validation": score_source(trained, validation)}


def score_source(trained, source, batch_size: int = 120) -> dict:
  """The exact-ODE metrics of `trained` on every image of `source`."""
  images = np.stack([source[i]["image"] for i in range(len(source))])
  labels = np.asarray([source[i]["label"] for i in range(len(source))])
  ids = np.asarray([source[i]["id"] for i in range(len(source))]) if "id" in source[0] else (
      np.arange(len(source)))
  start = time.perf_counter()
  ll = np.concatenate([trained.log_likelihoods(images[s:s + batch_size], ids[s:s + batch_size])
                       .log_likelihood for s in range(0, len(images), batch_size)])
  seconds = time.perf_counter() - start
  num_classes = trained.num_classes
  log_post = classifier.log_posteriors(ll, classifier.log_prior("uniform", num_classes))
  report = metrics.classification_metrics(labels, np.exp(log_post), num_classes,
                                          log_probs=log_post)
  dims = int(np.prod(trained.image_shape)) * trained.config.data.num_channels
  true_ll = ll[np.arange(len(labels)), labels]
  return {"images": int(len(labels)), "accuracy": report["accuracy"],
          "balanced_accuracy": report["balanced_accuracy"], "auc": report["auc"],
          "nats_per_dim_true_class": float(-np.mean(true_ll) / dims),
          "failed": int(np.sum(~np.isfinite(ll).all(axis=1))), "seconds": seconds}


def with_precise_batch_stats(trained, batches: int = _PRECISE_BN_BATCHES, batch_size: int = 128):
  """`trained` with its BatchNorm statistics recomputed under its (EMA) parameters."""
  config = trained.config
  source = trained.builder.as_data_source(split="train")
  data_key, noise_key = jax.random.split(jax.random.PRNGKey(config.seed + 2))
  stats = precise_bn.precise_batch_stats(
      trained.model.apply, trained.variables,
      precise_bn.sample_batches(source, config, data_key, batches, batch_size), noise_key,
      trained.sde, eps=config.training.eps)
  variables = {**trained.variables, precise_bn.COLLECTION: stats}
  return api.from_variables(config, variables, spec=trained.spec, workdir=trained.workdir,
                            step=trained.step, mesh=trained.mesh, model=trained.model)


def training_seconds(workdir: str) -> float:
  """Wall seconds of training, summed from the run's logged steps/s (survives resumes)."""
  seconds, last_step = 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row["step"] > last_step:
        seconds += (row["step"] - last_step) / row["steps_per_s"]
        last_step = row["step"]
  return seconds


def run_variant(name: str, workdir: str, data_dir: str = "") -> dict:
  """Trains (or resumes) and scores one variant; returns its JSON entry."""
  config = variant_config(name, data_dir, workdir)
  trained_as = trained_variant(name)
  out_dir = os.path.join(workdir, trained_as)
  load_before = os.getloadavg()
  if VARIANTS[trained_as].get("init_from"):
    # The run it starts from (kept from its own row, or trained now: a finished run returns).
    base = VARIANTS[trained_as]["init_from"]
    trainer.train(variant_config(base, data_dir, workdir), os.path.join(workdir, base))
  trainer.train(config, out_dir)
  load_after_training = os.getloadavg()
  trained = sgc_jax.load(out_dir, config)
  if name in PRECISE_BN:
    trained = with_precise_batch_stats(trained)
  scores = {"ode": score_test_split(trained),
            **({"ode_fit": score_fit(trained)} if name in FIT_CHECKED else {})}
  return {"overrides": VARIANTS[trained_as], "trained_as": trained_as,
          "eval_overrides": eval_overrides(name),
          "precise_bn_batches": _PRECISE_BN_BATCHES if name in PRECISE_BN else 0,
          "seed": config.seed, "training": config.training.to_dict(), "eval": config.eval.to_dict(),
          "model": config.model.to_dict(), "data": config.data.to_dict(),
          "train_seconds": training_seconds(out_dir), "load_average": {
              "before": load_before, "after_training": load_after_training,
              "after_scoring": os.getloadavg()},
          **scores,
          "commit": provenance.git_commit(),
          "machine": provenance.machine(), "devices": jax.device_count(), "device": str(jax.devices()[0].device_kind)}


# Settings that name a place, not a number: the data's and the starting run's folders.
_PATHS = {"data.data_dir", "training.init_from"}


def seed_of(entry: dict) -> int:
  """The seed a results row was trained with (rows before the field record it as an override)."""
  return entry.get("seed", entry["overrides"].get("seed", 0))


def changed_settings(name: str, entry: dict) -> list[str]:
  """The settings in which `entry` (a results row) differs from `name`'s definition now.

  A setting absent from the row predates its option (which then did not exist, i.e. was
  off); tolerances are compared only for adaptive solvers, the only ones they steer.
  """
  config = variant_config(name)
  changed = []
  if config.seed != seed_of(entry):
    changed.append("seed")
  for block in ("training", "model", "data", "eval"):
    now = _flat(json.loads(json.dumps(config[block].to_dict())), block)
    adaptive = now[f"{block}.adaptive"] or entry["eval"]["adaptive"] if block == "eval" else False
    for field, was in _flat(entry[block], block).items():
      if field in _PATHS or field not in now or now[field] == was:
        continue
      if field in ("eval.rtol", "eval.atol") and not adaptive:
        continue
      changed.append(field)
  return changed


def _flat(settings: dict, prefix: str) -> dict:
  """Nested settings as {"block.key.subkey": value}, so a sub-block's new option counts alone."""
  out = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}.{key}"))
    else:
      out[f"{prefix}.{key}"] = value
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variants",
                      default=",".join([*VARIANTS, *PRECISE_BN, *RESCORED, *FIT_CHECKED]))
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--out", default=_RESULTS)
  args = parser.parse_args()
  results = {}
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
  for name in args.variants.split(","):
    if name in results:
      changed = changed_settings(name, results[name])
      if changed:
        # Its row would otherwise stand for a model this definition no longer trains.
        raise SystemExit(f"{args.out}: {name} was measured with other settings "
                         f"({', '.join(changed)}); name the new definition anew, or pass "
                         "another --out")
      print(f"{name}: done (accuracy {results[name]['ode']['accuracy']:.3f})")
      continue
    results[name] = run_variant(name, args.workdir, args.data_dir)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    ode = results[name]["ode"]
    print(f"{name}: ODE accuracy {ode['accuracy']:.3f}, balanced {ode['balanced_accuracy']:.3f}, "
          f"train {results[name]['train_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
  main()
