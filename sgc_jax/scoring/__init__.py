"""Scores an archive of mammograms with a trained model: inputs -> decode pool -> scorer -> chunks.

`score_archive(trained, inputs, out_dir)` is what `sgc-score` runs. Its stages,
each a module that can be used and tested alone:

* `inputs`: directories (walked recursively, files with or without extension,
  symlinks followed, a directory reached twice reported once), text files of
  paths (one per line, relative to the list), single DICOM files, and
  `tfds:NAME[/CONFIG]:SPLIT` record splits. Every input becomes one item with a
  unique key, and ends up in exactly one of the two output tables;
* `decode`: each DICOM is decoded and preprocessed in a process pool, with the
  `PreprocessOptions` and allowed modalities of the dataset builder the model
  was trained on, while the previous batch is being scored; whatever a decoder
  raises, panics with or dies of is that file's typed error;
* `score`: fixed-shape batches scored by the model's class scorer, and the
  table rows (per class: log-likelihood, bits/dim, calibrated probability,
  network evaluations; the prediction, the OOD scores and which OOD test fired);
* `chunks`: rows committed in numbered chunks (a chunk is complete or absent),
  each recording the model and settings it was made with;
* `run`: the loop, resuming from what is committed (after a kill, even kill -9,
  the final tables hold exactly one row per input; a changed file is
  rescored; an output made with other settings is refused), the merge into
  `scores.parquet` and `errors.parquet` in input order, and `summary.json`;
* `tables`: `breasts.parquet` (the views of a breast fused: summed
  log-likelihoods, breast-level posterior) and `exams.parquet` (the most
  suspicious breast of each exam), from the image rows;
* `report`: `report.html`, one self-contained page of the run (thumbnails
  written while scoring).
"""
from sgc_jax.scoring.chunks import (ERRORS_FILE, SCORES_FILE, ScoringError,
                                    SettingsMismatchError, committed_chunks)
from sgc_jax.scoring.inputs import Item, list_inputs, parse_tfds_spec
from sgc_jax.scoring.run import (CHUNKS_DIR, SUMMARY_FILE, format_summary, load_model,
                                 score_archive)
