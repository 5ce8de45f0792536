"""The solver grid `sgc-bench-solvers` runs: each setting is one way to score, timed and
compared with a tight reference.

    sgc-bench-solvers --workdir /tmp/digits --output /tmp/digits/solvers
    sgc-bench-solvers --workdir /tmp/digits --output /tmp/solvers \
        --grid configs/solver_grid.py --grid.fixed.steps="(8,16,32)"

Families (one line each in the plots):
  * adaptive: Diffrax solvers with their own error estimate, PID control, at
    each tolerance;
  * fixed: Diffrax solvers on a fixed grid dense near eps, at each step count;
  * expint: the log-SNR exponential integrator (`sgc_jax.exponential_integrator`)
    at each step count;
  * probes: the exact divergence and the Hutchinson estimate (each probe kind
    x count x one set per solve or fresh per step) on one base setting; the
    other families use `divergence`;
  * denoising: the shared-noise denoising bound at each sample count.
The reference is a float64 solve (Tsit5 at `reference.tol`, or an exponential
integrator at `reference.steps`) with the exact divergence when the image has at most `reference.max_exact_dims` dimensions,
else with `reference.num_probes` Gaussian probes (the output says which).
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.eps = 1e-5
  config.repeats = 3                  # timing: median of this many runs after a compile run
  # Divergence of the solver families (the probes family varies it).
  config.divergence = "hutchinson"    # "hutchinson" | "exact" (D JVPs per evaluation)
  config.probe = "rademacher"
  config.num_probes = 1

  # A Diffrax solver at `tol`, or an exponential integrator ("expint3") at `steps`.
  config.reference = ml_collections.ConfigDict({
      "solver": "tsit5", "tol": 1e-7, "steps": 256, "max_exact_dims": 4096, "num_probes": 64,
      "max_steps": 100000})
  config.adaptive = ml_collections.ConfigDict({
      "solvers": ("bosh3", "tsit5", "dopri5", "dopri8"), "tols": (1e-3, 1e-4, 1e-5)})
  config.fixed = ml_collections.ConfigDict({
      "solvers": ("euler", "heun", "midpoint", "tsit5"), "steps": (8, 32, 128),
      "grid": "quadratic"})
  config.expint = ml_collections.ConfigDict({
      "solvers": ("expint2", "expint3"), "steps": (8, 12, 16, 20, 27, 40), "grid": "logsnr"})
  config.probes = ml_collections.ConfigDict({
      "base_solver": "expint3", "base_steps": 27, "grid": "logsnr",
      "kinds": ("exact", "rademacher", "gaussian"), "counts": (1, 2, 4, 8),
      # One set of probes per solve, and probes drawn afresh at every step (their errors
      # average out along the path; the base solver must be an exponential integrator).
      "resample": (False, True)})
  config.denoising = ml_collections.ConfigDict({"samples": (16, 64, 256)})
  # images * classes / s against the batch size, for the recommended settings and the cheapest
  # adaptive one: a fixed grid's cost per image stays flat, an adaptive solve's can grow (the
  # batch waits for its slowest member).
  config.batch_sizes = (1, 4, 16, 64, 256)
  # "exact": mean error at most this many bits/dim; "fast": at least this decision agreement.
  config.exact_bits_per_dim = 0.01
  config.fast_agreement = 0.99
  return config
