"""CBIS-DDSM (mass + calcification), benign vs malignant: the seed U-Net at 384x384.

The default recipe adds the training levers measured on digits (configs/mammography.py);
append `:seed` to the config path for the seed's literal recipe.

Convert the TCIA download once, then train and evaluate:

    sgc-convert cbis_ddsm --manual_dir /data/CBIS-DDSM --data_dir ~/tfds --config full_384
    sgc-train --config configs/cbis_ddsm.py --workdir /runs/cbis \
        --config.data.data_dir ~/tfds
    sgc-evaluate --config configs/cbis_ddsm.py --workdir /runs/cbis \
        --config.data.data_dir ~/tfds

Use `--config.data.builder_config roi_384` for the ROI crops. Expected result:
unknown for this port (the paper's tables could not be retrieved); the run
writes accuracy, AUC, F1, sensitivity and specificity for both the generative
classifier and the CNN baseline to WORKDIR/eval_test/metrics.json.
"""
from configs import mammography


def get_config(recipe: str = ""):
  # 2,864 full-field training images (mass + calc); the seed's 60 epochs.
  return mammography.get(recipe, "cbis_ddsm", "full_384", num_train_images=2864, epochs=60)
