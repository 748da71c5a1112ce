"""augment.augment's route on the CPU: cpu_views.c, built with the system's C compiler at first use.

Hand-written because no library applies per-sample parameters without paying for every sample's operations:
batched tensor operations (augment.py's route, which the GPU runs) make each operation one pass over the whole
batch in memory, and on a CPU those passes, not the arithmetic, are the cost. The kernel makes each view from
start to end while it sits in the core's cache, runs only the operations the sample drew, and takes the
parameters augment.py draws, so the two routes give the same views (tests/data/test_cpu_views.py). It is built
into the user's cache ($SELFSUP_CACHE/kernels, else ~/.cache/selfsup/kernels), once per source, compiler and CPU;
without a C compiler, the tensor route runs instead (with a warning). `SELFSUP_CPU_KERNEL=0` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from selfsup.caches import cache_dir

SOURCE_FILE = Path(__file__).with_name("cpu_views.c")
# -fno-trapping-math lets floorf vectorize (the kernel never relies on floating-point traps); without OpenMP
# (macOS's clang) it runs on one thread.
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-std=c11", "-shared", "-fPIC",
         *(("-fopenmp",) if sys.platform == "linux" else ()))
# One sample's row of parameters, as cpu_views.c's enum lays it out: name and width.
COLUMNS = {"box": 4, "flip": 1, "jitter": 1, "factors": 4, "order": 4, "gray": 1, "blur": 1, "solarize": 1}
NUM_PARAMS = sum(COLUMNS.values())


def cpu_fingerprint() -> str:
    """What -march=native compiles for: a cache shared across machines must not hand one CPU another's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line for line in lines if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def build(compiler: str, target: Path) -> None:
    """Compile to a temporary name beside `target`, then rename: a build killed half-way leaves no library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE_FILE), "-o", partial, "-lm"], check=True, capture_output=True,
                       text=True, timeout=120)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The built kernel, or None (the tensor route then runs): turned off, not Linux/macOS, or no compiler."""
    if os.environ.get("SELFSUP_CPU_KERNEL", "1") == "0" or sys.platform not in ("linux", "darwin"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        warnings.warn("no C compiler (cc, gcc or clang) for selfsup's CPU augmentation kernel: views are made with "
                      "tensor operations, several times slower; install one (apt-get install -y gcc)")
        return None
    key = hashlib.sha256("\n".join([SOURCE_FILE.read_text(), compiler, *FLAGS, cpu_fingerprint()]).encode())
    target = cache_dir("kernels") / f"cpu_views-{key.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            build(compiler, target)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            warnings.warn(f"could not build selfsup's CPU augmentation kernel with {compiler} ({detail.strip()[-300:]})"
                          f": views are made with tensor operations, several times slower")
            return None
    lib = ctypes.CDLL(str(target))
    if lib.num_params() != NUM_PARAMS:
        raise RuntimeError(f"cpu_views.c lays out {lib.num_params()} parameters a sample, cpu_views.py {NUM_PARAMS}")
    pointer, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    lib.make_views.argtypes = [pointer, i32, i32, i32, pointer, i32, i32, i32, pointer, i32, pointer, pointer, i64, i32]
    lib.make_views.restype = i32
    return lib


def usable(images: torch.Tensor) -> bool:
    return (images.device.type == "cpu" and images.dtype == torch.uint8 and images.dim() == 4
            and not torch.compiler.is_compiling() and library() is not None)


def make_views(images: torch.Tensor, params: torch.Tensor, crop: bool, size: int, ops: list[int],
               kernels: torch.Tensor | None, uint8: bool) -> torch.Tensor:
    """Each sample's view (B, C, size, size), float in [0, 1] or uint8: `params` (B, NUM_PARAMS) as
    cpu_views.c lays them out, `kernels` (B, k) the blur kernels when any sample is blurred."""
    lib = library()
    images, params = images.contiguous(), params.to(torch.float32).contiguous()
    b, channels, height, width = images.shape
    if not crop and (height, width) != (size, size):  # the kernel reads size x size pixels of each image
        raise ValueError(f"uncropped views need images of {size} x {size} px, got {height} x {width}")
    kernels = kernels.to(torch.float32).contiguous() if kernels is not None else None
    out = torch.empty((b, channels, size, size), dtype=torch.uint8 if uint8 else torch.float32)
    float_out, uint8_out = (None, out.data_ptr()) if uint8 else (out.data_ptr(), None)
    code = lib.make_views(images.data_ptr(), channels, height, width, params.data_ptr(), int(crop), size,
                          sum(1 << op for op in ops), kernels.data_ptr() if kernels is not None else None,
                          kernels.shape[1] if kernels is not None else 0, float_out, uint8_out, b,
                          torch.get_num_threads())
    if code:
        raise MemoryError("selfsup's CPU augmentation kernel ran out of memory")
    return out
