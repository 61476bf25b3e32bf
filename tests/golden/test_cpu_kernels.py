"""The bit-exact method tests hold whatever kernels the CPU gives torch.

torch picks vectorised kernels by CPU (AVX2, AVX-512) with other bits for transcendental functions,
fused multiply-adds and reductions. This machine's own run covers its kernels; here the golden
comparisons and the method tests run again in a subprocess on the scalar kernels and on the AVX2
ones, so a result that depends on the kernels fails on any machine, not only on another CPU.
(`avx512` can only be asked for on a CPU that has it: elsewhere torch stops on an illegal
instruction.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the comparisons with mergekit's bytes and with plain-torch formulas; tests/real are left out (they
# build a real model: minutes), as are tests that do not compute tensors
SUITES = [
    "tests/golden/test_golden.py::test_output_equals_mergekit",
    "tests/unit/methods",
    "tests/e2e/test_methods.py",
    "tests/e2e/test_random_methods.py",
]


def has_avx2() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx2" in flags and " fma" in flags


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_method_results_hold_on_other_cpu_kernels(capability: str, tmp_path: Path) -> None:
    if capability == "avx2" and not has_avx2():
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--basetemp={tmp_path}", *SUITES]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"under ATEN_CPU_CAPABILITY={capability}:\n{result.stdout[-3000:]}"
    check = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    used = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120).stdout.strip()
    assert used == capability.upper()
