"""Builds the `sparge` PyTorch package: the C++ core (src/) plus the thin binding (python/csrc).

    pip install .                       # CPU backend, plus CUDA kernels when a GPU build is possible
    SPARGE_WITH_CUDA=1 pip install .    # require the CUDA kernels (fails clearly without nvcc)
    SPARGE_WITH_CUDA=0 pip install .    # CPU backend only

The CUDA kernels are built when SPARGE_WITH_CUDA=1, or by default when PyTorch was built with
CUDA, nvcc is found and either a GPU is visible or TORCH_CUDA_ARCH_LIST names the targets.
MAX_JOBS sets the parallel compile jobs (ninja). Objects are kept in python/build, so a rebuild
only recompiles what changed.

The C++ standard is the one the installed PyTorch's headers demand (C++17 up to torch 2.11, C++20
in torch 2.15; Sparge's sources compile under both); SPARGE_CXX_STD=17|20|23 overrides it. When the
build fails, its last lines name the first compiler error and the likely cause.
"""
import os
import platform
import re
import shutil
import sys
import threading
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
BUILD_DIR = ROOT / "python" / "build"
MIN_TORCH = (2, 4)


def fail(message):
    sys.exit(f"error: sparge: {message}")


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    fail("PyTorch is not installed in this environment; install torch >= "
         f"{MIN_TORCH[0]}.{MIN_TORCH[1]} first (pip install torch), then pip install .")

_torch_version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
if _torch_version < MIN_TORCH:
    fail(f"torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} is required (torch.library.custom_op and "
         f"register_fake), found torch {torch.__version__}")

_cxx = os.environ.get("CXX", "c++")
if shutil.which(_cxx) is None:
    fail(f"no C++ compiler found (looked for '{_cxx}' on PATH; set CXX or install g++)")


def want_cuda():
    setting = os.environ.get("SPARGE_WITH_CUDA", "auto").lower()
    if setting in ("0", "off", "false"):
        return False
    nvcc_found = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if setting in ("1", "on", "true"):
        if torch.version.cuda is None:
            fail("SPARGE_WITH_CUDA=1 but this PyTorch was built without CUDA "
                 f"(torch {torch.__version__})")
        if cpp_extension.CUDA_HOME is None:
            fail("SPARGE_WITH_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME or put nvcc "
                 "on PATH)")
        return True
    if setting != "auto":
        fail(f"SPARGE_WITH_CUDA must be auto, 0 or 1, got '{setting}'")
    return nvcc_found and (torch.cuda.is_available() or "TORCH_CUDA_ARCH_LIST" in os.environ)


def project_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(r"project\(\s*sparge\s+VERSION\s+([0-9.]+)", text)
    if not match:
        fail("could not read the project VERSION from CMakeLists.txt")
    return match.group(1)


def default_arch_list():
    """Without TORCH_CUDA_ARCH_LIST torch builds for the visible GPU; on sm_90 that is plain
    sm_90, which lacks the wgmma instructions of the Hopper kernel: ask for 9.0a instead."""
    if "TORCH_CUDA_ARCH_LIST" in os.environ or not torch.cuda.is_available():
        return
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")


def cuda_archs():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    return ";".join(a.replace(".", "") for a in re.split(r"[;\s]+", archs) if a) or "torch-default"


def write_build_info(with_cuda):
    """The equivalent of CMake's configure_file(cmake/build_info.h.in)."""
    values = {
        "PROJECT_VERSION": project_version(),
        "SPARGE_WITH_CUDA_INT": "1" if with_cuda else "0",
        "SPARGE_CUDA_ARCHS": cuda_archs() if with_cuda else "",
        "SPARGE_FAST_BUILD_INT": "0",
        "SPARGE_CUDA_HAVE_SM90A_INT": "1" if with_cuda and "90a" in cuda_archs().split(";") else "0",
    }
    template = (ROOT / "cmake" / "build_info.h.in").read_text()
    unknown = sorted(set(re.findall(r"@(\w+)@", template)) - set(values))
    if unknown:
        fail(f"cmake/build_info.h.in uses {unknown}, which setup.py does not define yet")
    text = re.sub(r"@(\w+)@", lambda m: values[m.group(1)], template)
    out = BUILD_DIR / "include" / "sparge" / "build_info.h"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:  # keep the timestamp: no needless rebuilds
        out.write_text(text)
    return out.parent.parent


def relative(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def sources(with_cuda):
    src = ROOT / "src"
    files = [p for d in ("common", "cpu", "workloads") for p in (src / d).glob("*.cc")]
    files = [p for p in files if p.name != "cuda_stub.cc"]
    if with_cuda:
        files += list((src / "cuda").rglob("*.cu")) + list((src / "cuda").rglob("*.cc"))
    else:
        files.append(src / "common" / "cuda_stub.cc")
    return relative(files) + ["python/csrc/binding.cc"]


def torch_cxx_standard(include_dir):
    """The C++ standard (17, 20, ...) below which the PyTorch headers under include_dir stop with
    an #error, or None when they state none. ATen.h and torch/all.h test `__cplusplus < 201703L`
    up to torch 2.11 and `__cplusplus < 202002L` in torch 2.15; a hard-coded -std=c++17 fails
    there ("C++20 or later compatible compiler is required")."""
    found = []
    for header in ("ATen/ATen.h", "torch/csrc/api/include/torch/all.h"):
        path = Path(include_dir) / header
        if path.is_file():
            text = path.read_text(errors="replace")
            found += [int(v) for v in re.findall(r"__cplusplus\s*<\s*(\d{4})\d\dL", text)]
    return max(found) % 100 if found else None


def cxx_standard():
    """SPARGE_CXX_STD when set, else what torch's headers demand, never below Sparge's own C++17.
    None (no -std flag: torch's BuildExtension adds its own) when the headers state nothing."""
    setting = os.environ.get("SPARGE_CXX_STD")
    if setting:
        if setting not in ("17", "20", "23"):
            fail(f"SPARGE_CXX_STD must be 17, 20 or 23, got '{setting}'")
        return int(setting)
    required = torch_cxx_standard(Path(torch.__file__).parent / "include")
    return max(required, 17) if required else None


def extension():
    with_cuda = want_cuda()
    if with_cuda:
        default_arch_list()
    generated_include = write_build_info(with_cuda)
    standard = cxx_standard()
    std = [f"-std=c++{standard}"] if standard else []
    cxx_flags = ["-O3", *std, "-fopenmp", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx_flags.append("-march=x86-64-v3")  # the same target as the CMake build
    define = [("SPARGE_WITH_CUDA", "1" if with_cuda else "0")]
    kwargs = dict(
        name="sparge._C",
        sources=sources(with_cuda),
        include_dirs=[str(ROOT / "include"), str(ROOT / "src"), str(generated_include)],
        define_macros=define,
        extra_link_args=["-fopenmp"],
    )
    if not with_cuda:
        return cpp_extension.CppExtension(extra_compile_args={"cxx": cxx_flags}, **kwargs)
    nvcc_flags = ["-O3", *std, "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler", "-fopenmp"]
    return cpp_extension.CUDAExtension(
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **kwargs)


# ---- a failed build names its first error last, where the user sees it ----------------------
# gcc "f.cc:3:5: error: ...", "fatal error: ...", nvcc "f.cu(3): error: ...", "nvcc fatal",
# the linker; not a path like "src/error.cc" nor Python's "RuntimeError".
_ERROR_LINE = re.compile(r"\berror\b\s*:|nvcc fatal|undefined reference to|\bKilled\b")
_CAUSES = [  # (pattern in the first error, likely cause); the first match wins
    (re.compile(r"C\+\+(\d\d) or later"),
     "PyTorch {torch} needs C++{0}, the build used {std}; set SPARGE_CXX_STD={0}"),
    (re.compile(r"unsupported (GNU|clang|host compiler)", re.I),
     "nvcc does not support this host compiler; point CXX (and NVCC_CCBIN) at one it does"),
    (re.compile(r"Killed|signal 9|out of memory|memory exhausted", re.I),
     "the compiler ran out of memory; retry with MAX_JOBS=1"),
    (re.compile(r"No such file or directory"),
     "a header is missing: an incomplete PyTorch/CUDA install or a missing -dev package"),
    (re.compile(r"undefined reference to"),
     "a link error: the torch found at build time differs from the one linked, or a stale "
     "python/build; remove python/build and retry"),
    (re.compile(r"."),
     "a compile error in Sparge's sources with {compiler}, torch {torch}, {std}; please report "
     "this line"),
]


def first_error(log):
    """The first line of a build log that reports an error, or None."""
    for line in log.splitlines():
        if _ERROR_LINE.search(line) and not line.lstrip().startswith(("FAILED:", "ninja:")):
            return line.strip()
    return None


def failure_summary(log, standard, exc=None):
    """Three lines: the build failed, its first error, the likely cause."""
    error = first_error(log) or (f"{type(exc).__name__}: {exc}" if exc else "(no error line found)")
    std = f"-std=c++{standard}" if standard else "torch's default -std"
    for pattern, cause in _CAUSES:
        match = pattern.search(error)
        if match:
            cause = cause.format(*match.groups(), torch=torch.__version__, std=std,
                                 compiler=os.environ.get("CXX", "c++"))
            break
    if len(error) > 300:
        error = error[:300] + " ..."
    return (f"error: sparge: the C++ extension did not build (torch {torch.__version__}, {std})\n"
            f"  first error:  {error}\n"
            f"  likely cause: {cause}")


class _Tee:
    """Copies what is written to file descriptors 1 and 2 (where ninja's compilers write, out of
    sys.stdout's sight) through to where they pointed, and keeps a copy for failure_summary."""

    def __enter__(self):
        self.chunks, self.threads, self.saved = [], [], []
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            self.saved.append((fd, os.dup(fd)))
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(target=self._copy, args=(read_end, self.saved[-1][1]),
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _copy(self, read_end, out):
        while True:
            data = os.read(read_end, 1 << 16)
            if not data:
                break
            self.chunks.append(data)
            while data:
                data = data[os.write(out, data):]
        os.close(read_end)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self.saved:
            os.dup2(saved, fd)  # closes the pipe's last write end: its thread sees EOF
        for thread in self.threads:
            thread.join(timeout=10)
        for _, saved in self.saved:
            os.close(saved)

    def text(self):
        return b"".join(self.chunks).decode(errors="replace")


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    def run(self):
        tee = _Tee()
        try:
            with tee:
                super().run()
        except Exception as exc:  # a compiler, ninja or linker failure; the log is above
            sys.exit(failure_summary(tee.text(), cxx_standard(), exc))


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(
        name="sparge",
        version=project_version(),
        packages=["sparge", "sparge.integrations"],
        package_dir={"": "python"},
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension},
        options={"build": {"build_base": str(BUILD_DIR.relative_to(ROOT))}},
        zip_safe=False,
    )
