"""INbreast, BI-RADS >= 4 malignant, patient-level split (seed 0), seed settings at 384x384.

    sgc-convert inbreast --manual_dir /data/INbreast --data_dir ~/tfds --config full_384
    sgc-train --config configs/inbreast.py --workdir /runs/inbreast \
        --config.data.data_dir ~/tfds
    sgc-evaluate --config configs/inbreast.py --workdir /runs/inbreast \
        --config.data.data_dir ~/tfds

Expected result: unknown for this port (the paper's tables could not be
retrieved); with 410 images, expect wide confidence intervals: read AUC with
sensitivity and specificity in WORKDIR/eval_test/metrics.json.
"""
from configs import mammography


def get_config():
  # About 330 training images after the 80/20 patient split; 100 epochs.
  config = mammography.seed_config("inbreast", "full_384", num_train_images=330, epochs=100)
  config.data.validation_fraction = 0.15
  return config
