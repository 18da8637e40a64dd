"""Loading the kernels' cached code without Numba's compiler (cnnmm.kernels.fastload).

Each check runs in a fresh interpreter, as a rank does: the parent first fills Numba's cache
(``kernels.warmup``), then a child loads it through :func:`cnnmm.kernels.load_cached` and runs
every kernel path of the kernel tests (all knob configurations, all cases, both dtypes)
against the float64 oracle; nothing may go through Numba's dispatcher machinery, and the
results must be bit-for-bit those of Numba's ordinary path (``CNNMM_FASTLOAD=0``).
"""

import os
import subprocess
import sys

import numpy as np

from cnnmm import kernels
from cnnmm.kernels import fastload

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import sys, zlib
import numpy as np
from cnnmm import kernels
from cnnmm.kernels import fastload
import test_kernels as t

loaded = kernels.load_cached(["float32", "float64"])
print("loaded", loaded)
crc = 0
rng = np.random.default_rng(5)
for config in t.CONFIGS:
    with t.knobs(config):
        for dtype in (np.float32, np.float64):
            for case, (N, C, K, H, W, R, S, stride, padding, dilation) in t.CASES.items():
                x, w, dy = t.make(rng, N, C, K, H, W, R, S, stride, padding, dilation, dtype)
                t.check_all(x, w, dy, stride, padding, dilation)
                for got in (kernels.conv2d_forward(x, w, stride, padding, dilation),
                            kernels.conv2d_backward_data(dy, w, (H, W), stride, padding, dilation),
                            kernels.conv2d_backward_weight(x, dy, (R, S), stride, padding, dilation)):
                    crc = zlib.crc32(np.ascontiguousarray(got).tobytes(), crc)
from numba.core.registry import CPUDispatcher
through_numba = sorted(f"{m}.{k}" for m, mod in list(sys.modules.items()) if m.startswith("cnnmm.kernels")
                       for k, v in vars(mod).items() if isinstance(v, CPUDispatcher) and v.overloads)
print("through numba", through_numba)
print("crc", crc)
"""


def run_child(script, **env_updates):
    env = dict(os.environ, **env_updates)
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_cached_code_runs_every_kernel_path_without_numba_compiler():
    kernels.warmup(["float32", "float64"])  # fills the cache the children read
    fast = run_child(CHILD)
    assert fast["loaded"] == "True"
    assert fast["through"] == "numba []", "entry points missing from fastload.ENTRY_POINTS: " + fast["through"]
    ordinary = run_child(CHILD, CNNMM_FASTLOAD="0")
    assert ordinary["loaded"] == "False"
    assert ordinary["through"] != "numba []"  # the ordinary path did go through Numba
    assert fast["crc"] == ordinary["crc"]


def test_empty_cache_loads_nothing(tmp_path):
    out = run_child("from cnnmm import kernels\nfrom cnnmm.kernels import fastload\n"
                    "print('loaded', kernels.load_cached(['float32']), len(fastload.installed('float32')))",
                    NUMBA_CACHE_DIR=str(tmp_path))
    assert out["loaded"] == "False 0"


def test_switch_and_formats():
    assert not fastload.enabled({"CNNMM_FASTLOAD": "0"})
    assert fastload.enabled({})
    assert fastload._undefined_symbols(b"\xcf\xfa\xed\xfe not an ELF object") is None
    from numba import types
    f32 = types.Array(types.float32, 1, "C")
    b1 = types.Array(types.boolean, 1, "C")
    assert fastload._matches((types.int64, f32, b1), np.dtype(np.float32))
    assert not fastload._matches((types.int64, f32), np.dtype(np.float64))
    assert not fastload._matches((types.int64, b1), np.dtype(np.float32))
