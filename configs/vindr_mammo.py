"""VinDr-Mammo, BI-RADS 4-5 malignant vs 1-3 benign, official split: the seed U-Net, 384x384.

The default recipe adds the training levers measured on digits (configs/mammography.py);
append `:seed` to the config path for the seed's literal recipe.

    sgc-convert vindr_mammo --manual_dir /data/vindr-mammo --data_dir ~/tfds --config full_384_clahe
    sgc-train --config configs/vindr_mammo.py --workdir /runs/vindr \
        --config.data.data_dir ~/tfds
    sgc-evaluate --config configs/vindr_mammo.py --workdir /runs/vindr \
        --config.data.data_dir ~/tfds

The seed applied CLAHE offline (parameters unknown): `full_384_clahe` uses
scikit-image defaults. The test split is 95 % benign (3,802 / 198), so always
predicting benign scores 95.05 % accuracy: judge by AUC, F1, sensitivity and
specificity in WORKDIR/eval_test/metrics.json. Expected figures: unknown for
this port (the paper's tables could not be retrieved).
"""
from configs import mammography


def get_config(recipe: str = ""):
  # 16,000 training images; the seed's 20 epochs (its step schedule then decays once).
  config = mammography.get(recipe, "vindr_mammo", "full_384_clahe", num_train_images=16000,
                           epochs=20)
  config.eval.prior = "empirical"
  return config
