"""Builds the `sparge` PyTorch package: the C++ core (src/) plus the thin binding (python/csrc).

    pip install .                       # CPU backend, plus CUDA kernels when a GPU build is possible
    SPARGE_WITH_CUDA=1 pip install .    # require the CUDA kernels (fails clearly without nvcc)
    SPARGE_WITH_CUDA=0 pip install .    # CPU backend only

The CUDA kernels are built when SPARGE_WITH_CUDA=1, or by default when PyTorch was built with
CUDA, nvcc is found and either a GPU is visible or TORCH_CUDA_ARCH_LIST names the targets.
MAX_JOBS sets the parallel compile jobs (ninja). Objects are kept in python/build, so a rebuild
only recompiles what changed.
"""
import os
import platform
import re
import shutil
import sys
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


def extension():
    with_cuda = want_cuda()
    if with_cuda:
        default_arch_list()
    generated_include = write_build_info(with_cuda)
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off"]
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
    nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
                  "-Xcompiler", "-fopenmp"]
    return cpp_extension.CUDAExtension(
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **kwargs)


setup(
    name="sparge",
    version=project_version(),
    packages=["sparge"],
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"build": {"build_base": str(BUILD_DIR.relative_to(ROOT))}},
    zip_safe=False,
)
