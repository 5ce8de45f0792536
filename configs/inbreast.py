"""INbreast, BI-RADS >= 4 malignant, patient-level split (seed 0): the seed U-Net at 384x384.

The default recipe adds the training levers measured on digits (configs/mammography.py);
append `:seed` to the config path for the seed's literal recipe.

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


def get_config(recipe: str = ""):
  # About 330 training images after the 80/20 patient split; the seed's 100 epochs.
  config = mammography.get(recipe, "inbreast", "full_384", num_train_images=330, epochs=100)
  config.data.validation_fraction = 0.15
  return config
