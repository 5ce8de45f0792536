"""What a results file records about where its numbers came from."""
import os

from sgc_jax import provenance


def test_machine_names_the_cpu_and_its_widest_vector_extension(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  processor = ("model name\t: Example CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 {}\n\n")
  cpuinfo.write_text(processor.format("avx512f") + processor.format(""), encoding="utf-8")
  assert provenance.machine(str(cpuinfo)) == {
      "cpu": "Example CPU 9000", "vector_extension": "avx512f", "cores": os.cpu_count()}
  cpuinfo.write_text(processor.format(""), encoding="utf-8")
  assert provenance.machine(str(cpuinfo))["vector_extension"] == "avx2"


def test_machine_without_cpuinfo_says_unknown(tmp_path):
  found = provenance.machine(str(tmp_path / "missing"))
  assert found["cpu"] == found["vector_extension"] == "unknown"


def test_git_commit_outside_a_checkout_is_unknown(tmp_path):
  assert provenance.git_commit(str(tmp_path)) == "unknown"
