"""The compiled CPU covariance path (``csrc/covariance_scan.cpp``): built on first use, used when it can be.

The Bayesian filter's covariance path (steps 2–5, :func:`probseq.ops.bayes.covariance_scan.covariance_path`) is, in
PyTorch, a few dozen small batched calls per chunk. On a CPU the kernel in ``csrc/`` runs the same recursion and the
same written-out backward per (batch·head) with the chunk's matrices in cache: the filter's forward+backward
1.3–1.5× faster at the experiments' shapes, 1.5–1.65× at K = 64 (docs/numerics.md, "The compiled covariance scan").
It changes the summation order only, so results agree with the PyTorch path to float rounding
(``tests/ops/test_native_scan.py``).

Building needs a C++20 compiler with OpenMP (GCC ≥ 10, Clang ≥ 11; ``$CXX``, default ``c++``); it takes about a
minute, once per machine, torch version and source: the library is cached under ``$PROBSEQ_NATIVE_DIR`` (default
``~/.cache/probseq/native``; not ``$XDG_CACHE_HOME``, which runs and tests point elsewhere), keyed by a hash of the
source, the compiler, torch's version and the processor's flags (the code is built for the processor it runs on,
``-march=native``).
``PROBSEQ_NATIVE`` chooses:

- unset (default): use the kernel when it builds; if it does not, warn once and use the PyTorch path;
- ``0``: never build or use it (the PyTorch path everywhere);
- ``1``: it must build (an error otherwise) — what the test suite asks for.

It is used for CPU float32/float64 inputs with ``K ∈ {16, 32, 64, 128}`` and ``C ≤ 64``, outside
``torch.compile`` tracing (where the PyTorch ops are traced instead) and not under ``create_graph=True`` (double
backward differentiates the plain ops). :func:`disabled` turns it off in a block (tests compare both).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "disabled", "usable", "build"]

SOURCE = Path(__file__).with_name("csrc") / "covariance_scan.cpp"
KEY_DIMS = (16, 32, 64, 128)
MAX_CHUNK = 64
_ENV = "PROBSEQ_NATIVE"
_BUILD_TIMEOUT = 900  # seconds; a build takes about one minute
_enabled = True  # switched by disabled()


class NativeBuildError(RuntimeError):
    """The kernel could not be compiled or loaded (the message holds the compiler's output)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("PROBSEQ_NATIVE_DIR") or Path.home() / ".cache" / "probseq" / "native")


def _cpu_flags() -> str:
    """The processor's model and feature flags (what ``-march=native`` builds for: ``flags`` on x86, ``Features`` on
    ARM), so a shared cache never hands a library built for one processor to another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.split(":")[0].strip() in ("flags", "Features", "model name", "CPU part")]
    return "\n".join(dict.fromkeys(wanted)) or f"{platform.machine()} {platform.processor()}"


def _compiler_version() -> str:
    try:
        result = subprocess.run(
            [*shlex.split(os.environ.get("CXX", "c++")), "--version"], capture_output=True, text=True
        )
    except OSError:
        return "no compiler"
    return result.stdout


def _command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    compiler = shlex.split(os.environ.get("CXX", "c++"))
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    libraries = cpp_extension.library_paths()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        *compiler,
        "-O3",
        "-march=native",
        "-fopenmp",
        "-shared",
        "-fPIC",
        "-std=c++20",
        "-w",  # torch's headers warn under some compilers; the kernel's own warnings were read when it was written
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *includes,
        str(SOURCE),
        "-o",
        str(output),
        *[f"-L{path}" for path in libraries],
        *[f"-Wl,-rpath,{path}" for path in libraries],
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
    ]


def _library_path() -> Path:
    """Where the library for this source, compiler, command, torch and processor lives in the cache."""
    parts = (
        SOURCE.read_bytes(),
        _compiler_version(),
        " ".join(_command(Path("OUT"))),
        torch.__version__,
        _cpu_flags(),
        sys.version,
        sysconfig.get_platform(),
    )
    key = hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()[:16]
    return _cache_dir() / key / "covariance_scan.so"


def build() -> Path:
    """Compile the kernel unless the cache holds it; returns the library's path.

    Concurrent processes wait on a lock and build once; the library is written to a temporary file and renamed, so
    an interrupted build leaves nothing half-written. Raises :class:`NativeBuildError` with the compiler's output.
    """
    path = _library_path()
    if path.exists():
        return path
    import fcntl  # POSIX only, as is the build

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # another process built it while we waited
            return path
        print("probseq: compiling the CPU covariance scan (once per machine and version; a minute)", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            partial = Path(scratch) / path.name
            try:
                result = subprocess.run(_command(partial), capture_output=True, text=True, timeout=_BUILD_TIMEOUT)
            except OSError as error:  # no compiler
                raise NativeBuildError(f"cannot run the C++ compiler: {error}") from error
            except subprocess.TimeoutExpired as error:
                raise NativeBuildError(f"the C++ compiler ran longer than {_BUILD_TIMEOUT} s") from error
            if result.returncode != 0:
                raise NativeBuildError(f"compiling {SOURCE.name} failed:\n{result.stderr[-4000:]}")
            os.replace(partial, path)
    return path


@functools.cache
def _load() -> bool:
    """Build (if needed) and load the kernel once per process; ``False`` when it is turned off or cannot be built
    (with one warning), unless ``PROBSEQ_NATIVE=1``, which raises instead."""
    setting = os.environ.get(_ENV, "").strip()
    if setting not in ("", "0", "1"):
        raise ValueError(f"{_ENV} must be 0 (never), 1 (required) or unset (when it builds); got {setting!r}")
    if setting == "0":
        return False
    try:
        if os.name != "posix":
            raise NativeBuildError(f"building needs a POSIX system with a C++ compiler, not {os.name!r}")
        torch.ops.load_library(str(build()))
    except (NativeBuildError, OSError, RuntimeError) as error:
        if setting == "1":
            raise NativeBuildError(f"{_ENV}=1 but the compiled covariance scan is unavailable: {error}") from error
        warnings.warn(
            f"probseq: the compiled covariance scan could not be built; using the PyTorch path (set {_ENV}=0 to "
            f"skip trying). {str(error)[:2000]}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def available() -> bool:
    """Whether the kernel is built and loaded (building it now if needed), and not turned off."""
    return _enabled and _load()


def usable(k: Tensor, chunk: int | None = None) -> bool:
    """Whether the covariance path of these chunked keys ``[N, B·H, C, K]`` (chunks of ``chunk`` tokens, ``C`` by
    default) runs in the kernel."""
    return (
        _enabled
        and k.device.type == "cpu"
        and k.dtype in (torch.float32, torch.float64)
        and k.shape[-1] in KEY_DIMS
        and (chunk or k.shape[-2]) <= MAX_CHUNK
        and not torch.compiler.is_compiling()
        and available()
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the PyTorch path inside the block (tests compare the two; not thread-safe)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
