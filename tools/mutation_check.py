"""Applies each mutation of the README's list in a throwaway copy and runs the tests meant to catch it.

    flock /tmp/sgc_heavy.lock python tools/mutation_check.py            # all, JSON to tools/results/
    python tools/mutation_check.py --only resume_off,divergence_099     # some
    python tools/mutation_check.py --source worktree                    # uncommitted tree, not HEAD

The copy is `git archive HEAD` (or the working tree, .git and .venv excluded)
unpacked under /tmp; the repository itself is never touched. Each mutation is
a small text patch (file, old string, new string; every occurrence of `old`
is replaced and at least one must exist; where a module moved, the first
candidate file that holds `old` is used). First the selected tests run on the
unmutated copy (they must pass, or a failure under a mutation would prove
nothing), then once per mutation. A mutation is "caught" when its tests fail
(pytest exit status 1) and "missed" when they pass; "not_applied" means the
patch's text is gone (the code moved: update the patch). Exits non-zero unless
every mutation is caught. Writes tools/results/mutation_check.json: per
mutation the patch, the tests, the outcome, the failing tests' names and seconds.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what the README calls it, [patch, ...], tests). A patch is
# ([candidate files], old, new): the first candidate holding `old` is patched.
MUTATIONS = {
    "resume_off": (
        "resume switched off",
        [(["sgc_jax/trainer.py"], "if checkpointing.latest_step(manager) is not None:",
          "if False:")],
        ["tests/test_trainer.py::test_resume_reaches_the_uninterrupted_state"]),
    "eval_processes_never_joined": (
        "evaluation's processes never joined into one job",
        [(["sgc_jax/evaluation.py"], "sharding.maybe_initialize_distributed()", "None"),
         (["sgc_jax/api.py"], "sharding.maybe_initialize_distributed()", "None")],
        ["tests/test_multiprocess.py::test_two_processes_score_a_split_like_one"]),
    "one_record_shard": (
        "both training processes reading one record shard",
        [(["sgc_jax/trainer.py"], "shard_index=jax.process_index(),", "shard_index=0,")],
        ["tests/test_multiprocess.py::test_two_processes_train_one_replicated_model"]),
    "labels_misaligned": (
        "labels misaligned with their likelihoods",
        [(["sgc_jax/evaluators/common.py", "sgc_jax/evaluation.py"],
          'out["label"].append(batch["label"][:n_valid])',
          'out["label"].append(np.roll(batch["label"][:n_valid], 1))')],
        ["tests/test_evaluation.py::"
         "test_evaluate_from_checkpoint_writes_metrics_predictions_and_plots"]),
    "ddpmpp_dropout_at_inference": (
        "DDPM++ dropout active at inference",
        [(["sgc_jax/models/ddpmpp.py"], "deterministic=not train", "deterministic=False")],
        ["tests/test_models.py::test_ddpmpp_dropout_only_in_training"]),
    "denoising_bias_1_nat": (
        "a 1-nat bias in the denoising estimator",
        [(["sgc_jax/estimators.py"], "+ _sde_constant(sde, dim, total_weight, eps))",
          "+ _sde_constant(sde, dim, total_weight, eps) + 1.0)")],
        ["tests/test_estimators.py::test_exact_score_recovers_the_log_density"]),
    "divergence_099": (
        "the divergence scaled by 0.99",
        [(["sgc_jax/likelihood.py"], "return score, jnp.sum(quad)",
          "return score, 0.99 * jnp.sum(quad)"),
         (["sgc_jax/likelihood.py"], "return score, jnp.mean(quad - control",
          "return score, 0.99 * jnp.mean(quad - control")],
        ["tests/test_likelihood.py::test_exact_divergence_matches_closed_form",
         "tests/test_likelihood.py::test_gaussian_probes_are_exact_on_unit_gaussian_scores"]),
    "metadata_csv_ignored": (
        "metadata.csv ignored",
        [(["sgc_jax/data/builders/cbis_ddsm.py"],
          "if not os.path.isfile(path):\n    return {}\n  series = {}",
          "if True:\n    return {}\n  series = {}")],
        ["tests/test_builders.py::test_cbis_check_finds_the_retriever_destination_layout"]),
    "reports_in_tfds_temporary_folder": (
        "reports written into TFDS's temporary folder",
        [(["sgc_jax/data/builders/mammography.py"],
          "report_dir = self.report_dir(data_dir, config)",
          "report_dir = os.fspath(self.data_dir)")],
        ["tests/test_builders.py::test_a_failed_build_keeps_its_report_and_says_why"]),
}


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                        text=True).stdout.strip()


def make_copy(source: str) -> str:
  """A throwaway copy of the repository (HEAD or the working tree) under /tmp."""
  copy = tempfile.mkdtemp(prefix="sgc_mutation_")
  if source == "head":
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
      tar.extractall(copy)
  else:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".whl")
    shutil.copytree(ROOT, copy, ignore=ignore, dirs_exist_ok=True)
  return copy


def apply(copy: str, patches) -> list[dict]:
  """Applies the patches in `copy`; returns what was done (file, replacements) or raises KeyError."""
  done = []
  for candidates, old, new in patches:
    for rel in candidates:
      path = os.path.join(copy, rel)
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          text = f.read()
        if old in text:
          with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))
          done.append({"file": rel, "old": old, "new": new, "replacements": text.count(old)})
          break
    else:
      raise KeyError(f"none of {candidates} holds {old!r}")
  return done


def run_tests(copy: str, tests: list[str], timeout: int) -> dict:
  env = dict(os.environ, PYTHONPATH=copy + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONDONTWRITEBYTECODE="1")
  start = time.perf_counter()
  try:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf", *tests],
        cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    status, output = result.returncode, result.stdout + result.stderr
  except subprocess.TimeoutExpired as e:
    status, output = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else ""
  failed = sorted(set(re.findall(r"^FAILED (\S+)", output, re.M)))
  return {"status": status, "seconds": round(time.perf_counter() - start, 1),
          "failed_tests": failed, "tail": output[-1500:]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated mutation names")
  parser.add_argument("--source", choices=("head", "worktree"), default="head")
  parser.add_argument("--out", default=os.path.join(ROOT, "tools", "results",
                                                    "mutation_check.json"))
  parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
  parser.add_argument("--keep", action="store_true", help="keep the copy")
  parser.add_argument("--dry_run", action="store_true",
                      help="only check that every patch applies (no tests, no JSON)")
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n] or list(MUTATIONS)
  unknown = set(names) - set(MUTATIONS)
  if unknown:
    parser.error(f"--only: unknown {sorted(unknown)}; known: {sorted(MUTATIONS)}")

  copy = make_copy(args.source)
  check = subprocess.run([sys.executable, "-c", "import sgc_jax; print(sgc_jax.__file__)"],
                         cwd=copy, env=dict(os.environ, PYTHONPATH=copy), capture_output=True,
                         text=True, check=True).stdout.strip()
  assert check.startswith(os.path.realpath(copy)) or check.startswith(copy), (
      f"the copy's tests would import {check}, not the copy")
  if args.dry_run:
    missing = 0
    for name in names:
      try:
        done = apply(copy, MUTATIONS[name][1])
        print(f"{name}: applies ({[d['file'] for d in done]})")
      except KeyError as e:
        missing += 1
        print(f"{name}: NOT APPLIED: {e}")
      shutil.rmtree(copy)
      copy = make_copy(args.source)
    shutil.rmtree(copy)
    return 1 if missing else 0
  tests = sorted({t for n in names for t in MUTATIONS[n][2]})
  print(f"copy: {copy}; baseline: {len(tests)} tests", flush=True)
  baseline = run_tests(copy, tests, args.timeout)
  print(f"baseline: status {baseline['status']} in {baseline['seconds']} s", flush=True)
  report = {
      "tool": "tools/mutation_check.py",
      "commit": _git("rev-parse", "HEAD"),
      "source": args.source,
      "dirty_paths_not_in_the_copy": (
          [line[3:] for line in _git("status", "--porcelain").splitlines()]
          if args.source == "head" else None),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": sys.version.split()[0],
      "baseline": {k: v for k, v in baseline.items() if k != "tail" or baseline["status"] != 0},
      "mutations": {},
  }
  if baseline["status"] != 0:
    print(baseline["tail"])
  for name in names:
    what, patches, mutation_tests = MUTATIONS[name]
    originals = {}
    for candidates, _, _ in patches:
      for rel in candidates:
        path = os.path.join(copy, rel)
        if os.path.exists(path) and rel not in originals:
          with open(path, encoding="utf-8") as f:
            originals[rel] = f.read()
    entry = {"what": what, "tests": mutation_tests}
    try:
      entry["patches"] = apply(copy, patches)
    except KeyError as e:
      entry.update(outcome="not_applied", reason=str(e))
    else:
      result = run_tests(copy, mutation_tests, args.timeout)
      outcome = {0: "missed", 1: "caught"}.get(result["status"], "error")
      entry.update(outcome=outcome, status=result["status"], seconds=result["seconds"],
                   failed_tests=result["failed_tests"])
      if outcome != "caught":
        entry["tail"] = result["tail"]
    finally:
      for rel, text in originals.items():
        with open(os.path.join(copy, rel), "w", encoding="utf-8") as f:
          f.write(text)
    report["mutations"][name] = entry
    print(f"{name}: {entry['outcome']} ({entry.get('seconds', 0)} s)", flush=True)
  report["summary"] = {o: sorted(n for n, e in report["mutations"].items() if e["outcome"] == o)
                       for o in ("caught", "missed", "not_applied", "error")}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  if not args.keep:
    shutil.rmtree(copy, ignore_errors=True)
  print(json.dumps(report["summary"]))
  ok = baseline["status"] == 0 and len(report["summary"]["caught"]) == len(names)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
