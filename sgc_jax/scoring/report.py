"""report.html: one self-contained page a reader of a scored archive looks at first.

Beside the tables, readable offline in any browser (every image inlined as a
base64 PNG, no script, no link out): the run summary, failures by reason,
histograms of the malignancy posterior (images and breasts) and of the OOD
scores, the most suspicious breasts with their views, and every image flagged
out of distribution, each as a thumbnail with its numbers and file path.

Thumbnails are of the preprocessed image the model scored, written while
scoring into `thumbnails/` (one small PNG per scored input, named by a hash of
its key): the report's candidates are only known once every row is in, and a
side folder keeps the committed chunks as small as they were.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import html
import io
import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import pyarrow as pa
# Pillow is a dependency of matplotlib; it resizes and encodes the thumbnails.
from PIL import Image

from sgc_jax.scoring import chunks, tables

REPORT_FILE = "report.html"
THUMBNAILS_DIR = "thumbnails"
THUMBNAIL_PIXELS = 64
SUSPICIOUS_BREASTS = 12
# Failed files listed per reason; the rest are in errors.parquet.
FAILURES_LISTED = 20


def thumbnail_png(image: np.ndarray, max_value: int, size: int = THUMBNAIL_PIXELS) -> bytes:
  """A grey (or RGB) PNG of `image` [H, W, C] at most `size` pixels a side.

  Scaled by the model's value range (`max_value`, not the image's own): a dark
  or washed-out input, often why it is out of distribution, stays so.
  """
  pixels = np.asarray(image, np.float64)
  pixels = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels[..., 0]
  pixels = np.clip(np.rint(pixels * (255.0 / max_value)), 0, 255).astype(np.uint8)
  picture = Image.fromarray(pixels)
  picture.thumbnail((size, size), Image.Resampling.BOX)
  out = io.BytesIO()
  picture.save(out, format="PNG", optimize=True)
  return out.getvalue()


class Thumbnails:
  """The `thumbnails/` folder of an output: one PNG per scored input key."""

  def __init__(self, out_dir: str, max_value: int = 255):
    self.directory = os.path.join(out_dir, THUMBNAILS_DIR)
    self.max_value = max_value

  def path(self, key: str) -> str:
    """Where the thumbnail of input `key` is (keys are paths: hashed into a flat name)."""
    name = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=12).hexdigest()
    return os.path.join(self.directory, f"{name}.png")

  def write(self, key: str, image: np.ndarray) -> None:
    """Writes `image`'s thumbnail through a temporary name (a kill leaves old or new)."""
    os.makedirs(self.directory, exist_ok=True)
    target = self.path(key)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(thumbnail_png(image, self.max_value))
    os.replace(tmp, target)

  def read(self, key: str) -> bytes | None:
    """The thumbnail's PNG bytes, or None when there is none (an output from before them)."""
    try:
      with open(self.path(key), "rb") as f:
        return f.read()
    except FileNotFoundError:
      return None


def _data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(width: float, height: float) -> Figure:
  # Not pyplot: no global backend switched, no figure left in pyplot's registry.
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _figure_uri(fig: Figure) -> str:
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=90, bbox_inches="tight")
  return _data_uri(out.getvalue())


def _posterior_histogram(scores: pa.Table, breasts: pa.Table, positive: str) -> str:
  fig = _figure(9, 3)
  bins = np.linspace(0, 1, 41)
  for ax, table, what in zip(fig.subplots(1, 2), (scores, breasts), ("images", "breasts")):
    values = np.asarray(table.column(f"probability_{positive}").to_pylist(), np.float64)
    ax.hist(values, bins=bins, color="#b03a2e")
    ax.set_xlabel(f"p({positive})")
    ax.set_ylabel(what)
    ax.set_title(f"{len(values)} {what}")
  return _figure_uri(fig)


def _ood_columns(scores: pa.Table) -> tuple[list[str], list[str]]:
  """(OOD score columns, OOD test columns) of the image rows, whatever the tests are."""
  names = [n for n in scores.column_names if n.startswith("ood_")]
  scores_ = [n for n in names if pa.types.is_floating(scores.schema.field(n).type)]
  tests = [n for n in names if pa.types.is_boolean(scores.schema.field(n).type)]
  return scores_, tests


def _ood_histogram(scores: pa.Table, columns: Sequence[str]) -> str:
  flagged = np.asarray([bool(v) for v in scores.column("ood").to_pylist()])
  fig = _figure(4.5 * len(columns), 3)
  axes = np.atleast_1d(fig.subplots(1, len(columns)))
  for ax, name in zip(axes, columns):
    values = np.asarray(scores.column(name).to_pylist(), np.float64)
    finite = np.isfinite(values)
    bins = np.histogram_bin_edges(values[finite], bins=40) if finite.any() else 10
    ax.hist([values[finite & ~flagged], values[finite & flagged]], bins=bins, stacked=True,
            color=["#5d6d7e", "#d68910"], label=["in distribution", "flagged"])
    ax.set_xlabel(name)
    ax.set_ylabel("images")
  axes[0].legend(fontsize=8)
  return _figure_uri(fig)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1150px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: 6px; font-size: 0.8em; }
.card.breast { width: 100%; }
.views { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 4px; }
.view { width: 330px; display: flex; gap: 6px; }
.card.image { display: flex; gap: 6px; width: 330px; }
.thumb { width: 96px; height: 96px; flex: none; image-rendering: pixelated; background: #000; }
.path { word-break: break-all; color: #555; font-family: monospace; }
.flag { color: #b9770e; font-weight: bold; }
"""


def _esc(value) -> str:
  if isinstance(value, float):
    value = f"{value:.4g}"
  return html.escape(str(value))


def _table(rows: Sequence[Sequence], header: Sequence[str] | None = None) -> str:
  head = "" if header is None else "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"
  body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table>{head}{body}</table>"


def _thumb(png: bytes | None) -> str:
  if png is None:
    return '<div class="thumb" title="no thumbnail"></div>'
  return f'<img class="thumb" alt="thumbnail" src="{_data_uri(png)}">'


def _flag(value) -> str:
  return "n/a" if value is None else ('<span class="flag">yes</span>' if value else "no")


def _summary_section(summary: dict) -> str:
  # Every plain value of the summary, whatever fields a version adds; nested ones stay in
  # summary.json.
  rows = [(name, value) for name, value in summary.items()
          if not isinstance(value, (dict, list))]
  return f'<section id="summary"><h2>Run summary</h2>{_table(rows)}</section>'


def _failures_section(errors: pa.Table) -> str:
  reasons = errors.column("reason").to_pylist()
  paths, messages = errors.column("path").to_pylist(), errors.column("message").to_pylist()
  by_reason = collections.defaultdict(list)
  for reason, path, message in zip(reasons, paths, messages):
    by_reason[reason].append((path, message))
  parts = [f'<section id="failures"><h2>Failures by reason ({len(reasons)})</h2>']
  if not reasons:
    parts.append("<p>Every input was scored.</p>")
  parts.append(_table(sorted(((r, len(v)) for r, v in by_reason.items()),
                             key=lambda row: -row[1]), ("reason", "files")))
  for reason, failed in sorted(by_reason.items()):
    listed = _table(failed[:FAILURES_LISTED], ("path", "message"))
    more = (f"<p>… and {len(failed) - FAILURES_LISTED} more in errors.parquet</p>"
            if len(failed) > FAILURES_LISTED else "")
    parts.append(f"<details><summary>{_esc(reason)} ({len(failed)})</summary>{listed}{more}"
                 "</details>")
  parts.append("</section>")
  return "".join(parts)


def _image_lines(row: dict, view: str, positive: str, ood_scores: Sequence[str],
                 ood_tests: Sequence[str]) -> str:
  """An image's numbers and path, beside its thumbnail."""
  lines = [f"<b>{_esc(view or '?')} {_esc(row['declared_laterality'])}</b> "
           f"p({_esc(positive)}) {_esc(row[f'probability_{positive}'])}, "
           f"{_esc(row['prediction'])}"]
  lines += [f"{_esc(name)} {_esc(row[name])}" for name in ood_scores]
  fired = [name for name in ood_tests if row[name]]
  lines.append("OOD " + _flag(row.get("ood"))
               + (f" ({_esc(', '.join(fired))})" if fired else ""))
  lines.append(f'<span class="path">{_esc(row["path"])}</span>')
  return "<div>" + "<br>".join(lines) + "</div>"


def write_report(out_dir: str, summary: dict, scores: pa.Table, errors: pa.Table,
                 breasts: pa.Table, names: Sequence[str], thumbnails: Thumbnails) -> str:
  """Writes `out_dir/report.html` from the final tables; returns its path."""
  positive = tables.malignant_class(names)
  ood_scores, ood_tests = _ood_columns(scores)
  by_key = {row["key"]: row for row in scores.to_pylist()}
  # The view positions fusion used: ViewPosition, or what a CBIS-DDSM PatientID names.
  view_of = {key: view for keys, views in zip(breasts.column("view_keys").to_pylist(),
                                              breasts.column("view_positions").to_pylist())
             for key, view in zip(keys, views)}
  parts = ["<!doctype html><html><head><meta charset=\"utf-8\"><title>sgc-score report</title>",
           f"<style>{_STYLE}</style></head><body><h1>sgc-score report</h1>",
           f"<p>{_esc(os.path.abspath(out_dir))}</p>",
           _summary_section(summary), _failures_section(errors)]

  parts.append(f'<section id="posteriors"><h2>Malignancy posterior p({_esc(positive)})</h2>')
  parts.append(f'<img alt="posterior histograms" '
               f'src="{_posterior_histogram(scores, breasts, positive)}"></section>')
  parts.append('<section id="ood-scores"><h2>Out-of-distribution scores</h2>')
  if ood_scores and scores.num_rows:
    parts.append(f'<img alt="OOD score histograms" src="{_ood_histogram(scores, ood_scores)}">')
  else:
    parts.append("<p>No OOD scores in these rows.</p>")
  parts.append("</section>")

  order = np.argsort(-np.asarray(breasts.column(f"probability_{positive}").to_pylist(),
                                 np.float64), kind="stable")[:SUSPICIOUS_BREASTS]
  parts.append(f'<section id="suspicious"><h2>The {len(order)} most suspicious breasts</h2>'
               '<div class="cards">')
  for rank, b in enumerate(order, 1):
    breast = breasts.slice(int(b), 1).to_pylist()[0]
    views = "".join(
        f'<div class="view" data-key="{_esc(key)}">{_thumb(thumbnails.read(key))}'
        f"{_image_lines(by_key[key], view_of[key], positive, ood_scores, ood_tests)}</div>"
        for key in breast["view_keys"])
    parts.append(
        f'<div class="card breast" data-breast="{_esc(breast["breast_id"])}">'
        f"<b>#{rank} p({_esc(positive)}) {_esc(breast[f'probability_{positive}'])}</b> "
        f"— {_esc(breast['prediction'])}, {_esc(breast['fusion'])}, {breast['views']} view(s), "
        f"OOD {_flag(breast['ood'])}<br><span class=\"path\">{_esc(breast['breast_id'])}</span>"
        f'<div class="views">{views}</div></div>')
  parts.append("</div></section>")

  flagged = [row for row in by_key.values() if row.get("ood")]
  parts.append(f'<section id="ood-flagged"><h2>Images flagged out of distribution '
               f'({len(flagged)})</h2><div class="cards">')
  if not flagged:
    tested = any(row.get("ood") is not None for row in by_key.values())
    parts.append("<p>None.</p>" if tested else
                 "<p>Not tested (no calibration: run sgc-evaluate).</p>")
  for row in flagged:
    parts.append(f'<div class="card image" data-key="{_esc(row["key"])}">'
                 f"{_thumb(thumbnails.read(row['key']))}"
                 f"{_image_lines(row, view_of[row['key']], positive, ood_scores, ood_tests)}"
                 "</div>")
  parts.append("</div></section></body></html>")
  path = os.path.join(out_dir, REPORT_FILE)
  tmp = os.path.join(out_dir, chunks.TMP_PREFIX + REPORT_FILE)
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(parts))
  os.replace(tmp, path)
  return path
