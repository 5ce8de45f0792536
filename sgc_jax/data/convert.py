"""Converts a mammography release into TFDS records, with a quality-control report.

`convert_dataset` is what `sgc-convert` runs:

1. matches every row of the release's tables to a file (`check_dataset`, also
   what `sgc-convert --check` runs alone: seconds, no decoding), writes
   `resolve_report.csv` and can print the summary; stops here if nothing
   resolved, or, with `strict`, if any table or listed image is missing;
2. decodes and preprocesses the found images in parallel processes into the
   decode cache (the slow part: ~0.3 CPU-seconds per 4.5k x 2.8k mammogram);
3. lets TFDS write the records from the cache (`records.prepare`), which also
   writes `errors.csv`, the per-file error report;
4. writes `qc_summary.json` (counts per split and class, skipped files with
   their reasons) and `preview.png` (a grid of records) next to the records.

The two reports live in `<data_dir>/<dataset>/<config>/`, beside the records'
version folder, so they survive a failed build. Every step is idempotent:
finished records are not rebuilt, and decoded images are reused, so an
interrupted conversion resumes where it stopped.
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import Callable

import numpy as np

from sgc_jax.data import decode_cache
from sgc_jax.data import records
from sgc_jax.data.builders import get_builder_class
from sgc_jax.data.builders import mammography

SUMMARY_FILENAME = "qc_summary.json"
PREVIEW_FILENAME = "preview.png"


def check_dataset(name: str, manual_dir: str, data_dir: str | None = None,
                  config: str | None = None) -> tuple[mammography.Resolution, str]:
  """Matches every table row of a manual download to a file, without decoding.

  Args:
    name: a registered mammography dataset ("cbis_ddsm", "inbreast", "vindr_mammo").
    manual_dir: the release as downloaded (see the builder's
      MANUAL_DOWNLOAD_INSTRUCTIONS).
    data_dir: the TFDS data dir (default `records.default_data_dir()`); the
      report is written in `<data_dir>/<name>/<config>/`.
    config: the builder config name (default: the builder's default).

  Returns:
    (resolution, the path of the resolve_report.csv written);
    `mammography.format_resolution` prints the first.

  Raises:
    mammography.ReleaseError: no table found, or a table lacks its columns.
  """
  builder_cls, builder_config, data_dir = _builder(name, data_dir, config)
  resolution = builder_cls.resolve(os.fspath(manual_dir), builder_config)
  report_file = os.path.join(builder_cls.report_dir(data_dir, builder_config),
                             mammography.RESOLVE_REPORT_FILENAME)
  mammography.write_resolve_report(report_file, resolution)
  return resolution, report_file


def convert_dataset(name: str, manual_dir: str, data_dir: str | None = None,
                    config: str | None = None, workers: int = 1, *,
                    progress: bool = True, preview_images: int = 16, strict: bool = False,
                    echo: Callable[[str], None] | None = None) -> dict:
  """Converts one mammography dataset's manual download into TFDS records.

  Args:
    name: a registered mammography dataset ("cbis_ddsm", "inbreast", "vindr_mammo").
    manual_dir: the release as downloaded (see the builder's
      MANUAL_DOWNLOAD_INSTRUCTIONS).
    data_dir: the TFDS data dir (default `records.default_data_dir()`).
    config: the builder config name (default: the builder's default).
    workers: decoding processes.
    progress: show a progress bar while decoding.
    preview_images: images in the preview grid (0: no preview).
    strict: stop before decoding if any table or listed image is missing;
      otherwise a partial download converts what is there.
    echo: called with the resolution summary before decoding (e.g. `print`).

  Returns:
    The QC summary (also written to `<records dir>/qc_summary.json`).

  Raises:
    mammography.ReleaseError: nothing to convert (no table, no listed image
      found or decodable), or, with `strict`, something missing.
  """
  if workers < 1:
    raise ValueError(f"workers: {workers} must be at least 1")
  builder_cls, builder_config, data_dir = _builder(name, data_dir, config)
  manual_dir = os.fspath(manual_dir)

  decode_seconds, decoded_now, cpu_per_image = 0.0, 0, None
  if not records.is_prepared(builder_cls, data_dir, config=builder_config.name):
    resolution, report_file = check_dataset(name, manual_dir, data_dir, builder_config.name)
    if echo is not None:
      echo(mammography.format_resolution(resolution, report_file))
    missing = resolution.missing()
    if not resolution.sources or (strict and missing):
      why = ("none of the listed images was found" if not resolution.sources else
             "strict, and missing: " + "; ".join(missing))
      raise mammography.ReleaseError(
          f"{name}/{builder_config.name} in {manual_dir}: nothing decoded, {why}; "
          f"unresolved {mammography.describe_skipped(resolution.skipped)}\n"
          f"Every entry: {report_file}")
    sources = resolution.sources
    start = time.perf_counter()
    decoded, _ = decode_cache.decode_all(
        sources, builder_config.preprocess_options(),
        builder_cls.decode_cache_dir(data_dir, builder_config), workers=workers,
        allowed_modalities=builder_cls.ALLOWED_MODALITIES, progress=progress,
        desc=f"{name}/{builder_config.name}")
    decode_seconds, decoded_now = time.perf_counter() - start, len(sources)
    cpu = [m["decode_cpu_seconds"] for m in decoded.values() if "decode_cpu_seconds" in m]
    if cpu:
      cpu_per_image = float(np.mean(cpu))
  start = time.perf_counter()
  builder = records.prepare(builder_cls, data_dir, config=builder_config.name,
                            manual_dir=manual_dir)
  write_seconds = time.perf_counter() - start

  summary = qc_summary(builder)
  summary["timing"] = {
      "workers": workers,
      "sources_decoded": decoded_now,
      "decode_seconds": round(decode_seconds, 3),
      "images_per_second": round(decoded_now / decode_seconds, 3) if decode_seconds else None,
      "cpu_seconds_per_image": round(cpu_per_image, 4) if cpu_per_image else None,
      "write_seconds": round(write_seconds, 3),
  }
  records_dir = os.fspath(builder.data_dir)
  if preview_images:
    summary["preview"] = save_preview(builder, os.path.join(records_dir, PREVIEW_FILENAME),
                                      preview_images)
  summary["summary_file"] = os.path.join(records_dir, SUMMARY_FILENAME)
  with open(summary["summary_file"], "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def _builder(name: str, data_dir: str | None, config: str | None):
  """(builder class, builder config, data dir) of a mammography dataset."""
  builder_cls = get_builder_class(name)
  if not issubclass(builder_cls, mammography.MammographyBuilder):
    raise ValueError(f"data.name: {name!r} is not a mammography dataset; sgc-convert "
                     "converts cbis_ddsm, inbreast and vindr_mammo")
  data_dir = os.fspath(data_dir or records.default_data_dir())
  return builder_cls, records.builder_config(builder_cls, config), data_dir


def qc_summary(builder) -> dict:
  """Counts per split and class and the skipped files of finished records."""
  records_dir = os.fspath(builder.data_dir)
  errors_file = os.path.join(
      type(builder).report_dir(builder.data_dir_root, builder.builder_config),
      mammography.ERRORS_FILENAME)
  skipped = decode_cache.read_error_csv(errors_file)
  counts = {split: dict(by_class) for split, by_class in builder.info.metadata["counts"].items()}
  for split, by_class in counts.items():
    by_class["total"] = int(builder.info.splits[split].num_examples)
  return {
      "dataset": builder.name,
      "config": builder.builder_config.name,
      "version": str(builder.version),
      "records_dir": records_dir,
      "counts": counts,
      "records": sum(c["total"] for c in counts.values()),
      "skipped": len(skipped),
      "skipped_by_reason": dict(collections.Counter(s.error for s in skipped)),
      "skipped_files": [s.row() for s in skipped],
      "errors_file": errors_file,
  }


def format_summary(summary: dict) -> str:
  """The QC summary as a few human-readable lines."""
  lines = [f"{summary['dataset']}/{summary['config']} {summary['version']}: "
           f"{summary['records']} records in {summary['records_dir']}"]
  for split, by_class in summary["counts"].items():
    classes = ", ".join(f"{k} {v}" for k, v in by_class.items() if k != "total")
    lines.append(f"  {split}: {by_class['total']} ({classes})")
  lines.append(f"  skipped: {summary['skipped']} "
               f"{summary['skipped_by_reason'] or ''} -> {summary['errors_file']}")
  for row in summary["skipped_files"][:10]:
    lines.append(f"    {row['error']}: {row['message']}")
  if summary["skipped"] > 10:
    lines.append(f"    ... {summary['skipped'] - 10} more in the error report")
  timing = summary.get("timing", {})
  if timing.get("images_per_second"):
    lines.append(f"  decoded {timing['sources_decoded']} files in {timing['decode_seconds']} s "
                 f"with {timing['workers']} workers ({timing['images_per_second']} images/s)")
  if summary.get("preview"):
    lines.append(f"  preview: {summary['preview']}")
  lines.append(f"  summary: {summary['summary_file']}")
  return "\n".join(lines)


def save_preview(builder, path: str, max_images: int = 16) -> str:
  """A PNG grid of records, spread over splits and classes; returns its path."""
  # The object-oriented Agg API leaves pyplot's global backend alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  picks = []
  splits = sorted(builder.info.splits)
  per_split = max(1, max_images // max(1, len(splits)))
  per_class = -(-per_split // len(mammography.CLASS_NAMES))
  rng = np.random.default_rng(0)
  for split in splits:
    source = records.data_source(builder, split)
    taken = collections.Counter()
    # Random order, so the grid is not the first records; bounded, so a split
    # with one rare class does not read every record looking for it.
    for i in rng.permutation(len(source))[:50 * per_split]:
      record = source[int(i)]
      label = int(record["label"])
      if taken[label] < per_class:
        taken[label] += 1
        picks.append((split, record))
      if sum(taken.values()) >= per_split:
        break
  picks = picks[:max_images]
  columns = min(4, len(picks))
  rows = -(-len(picks) // columns)
  figure = Figure(figsize=(3 * columns, 3.3 * rows))
  FigureCanvasAgg(figure)
  max_value = 2 ** builder.info.metadata["bit_depth"] - 1
  for i, (split, record) in enumerate(picks):
    axis = figure.add_subplot(rows, columns, i + 1)
    axis.imshow(np.asarray(record["image"])[..., 0], cmap="gray", vmin=0, vmax=max_value)
    label = mammography.CLASS_NAMES[int(record["label"])]
    side, view = records.text(record["laterality"]), records.text(record["view"])
    axis.set_title(f"{split} {label} {side} {view}", fontsize=8)
    axis.axis("off")
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  return path
