"""Launch the MPI test suites (tests/mpi) at 1, 2, 3 and 4 ranks, each under a time limit, and
at 6 and 8 (marked ``slow``; oversubscribed on small machines; ``-m "not slow"`` skips them).

Odd rank counts find uneven-partition bugs. A failure shows rank 0's report and every other
rank's log.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = int(os.environ.get("CNNMM_MPI_SUITE_TIMEOUT", "900"))


def _logs(logdir):
    parts = []
    for path in sorted(glob.glob(os.path.join(logdir, "rank*.log"))):
        with open(path) as f:
            parts.append(f"----- {os.path.basename(path)} -----\n{f.read()[-6000:]}")
    return "\n".join(parts)


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("nranks", [1, 2, 3, 4, pytest.param(6, marks=pytest.mark.slow),
                                    pytest.param(8, marks=pytest.mark.slow)])
def test_mpi_suite(nranks, tmp_path):
    args = [sys.executable, "-m", "mpi4py", os.path.join(HERE, "mpi_main.py"), os.path.join(HERE, "mpi")]
    try:
        result = mpiexec(nranks, args, timeout=TIMEOUT, env={"CNNMM_TEST_LOGDIR": str(tmp_path)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"MPI suite at {nranks} ranks did not finish in {TIMEOUT} s\n{exc.stdout}\n{exc.stderr}\n"
                    f"{_logs(tmp_path)}")
    report = f"--- rank 0 ---\n{result.stdout[-20000:]}\n{result.stderr[-6000:]}\n{_logs(tmp_path)}"
    assert result.returncode == 0, f"MPI suite failed at {nranks} ranks (exit {result.returncode})\n{report}"
    summary = re.search(r"(\d+) passed", result.stdout)
    assert summary and int(summary.group(1)) > 0, f"MPI suite at {nranks} ranks ran no test\n{report}"
    assert not re.search(r"\d+ (failed|error)", result.stdout), report
