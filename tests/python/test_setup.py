"""setup.py and python/build_backend.py: the C++ standard follows the installed torch, a failed
build says why in its last lines, and pip is asked only for a setuptools that can build wheels."""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("sparge_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


def write_header(root, rel, cplusplus):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#if __cplusplus < {cplusplus}L\n#error too old\n#endif\n")


@pytest.mark.parametrize("cplusplus, standard", [(201703, 17), (202002, 20), (202302, 23)])
def test_standard_read_from_torch_headers(setup_py, tmp_path, cplusplus, standard):
    write_header(tmp_path, "ATen/ATen.h", cplusplus)
    write_header(tmp_path, "torch/csrc/api/include/torch/all.h", 201703)
    assert setup_py.torch_cxx_standard(tmp_path) == standard


def test_no_standard_in_headers_leaves_the_choice_to_torch(setup_py, tmp_path):
    assert setup_py.torch_cxx_standard(tmp_path) is None


def test_cxx_std_override(setup_py, monkeypatch):
    monkeypatch.setenv("SPARGE_CXX_STD", "23")
    assert setup_py.cxx_standard() == 23
    monkeypatch.setenv("SPARGE_CXX_STD", "14")
    with pytest.raises(SystemExit, match="SPARGE_CXX_STD must be 17, 20 or 23"):
        setup_py.cxx_standard()


def test_flags_compile_the_installed_torch_headers(setup_py, monkeypatch, tmp_path):
    """The flags setup.py gives the compiler get through ATen.h's C++-standard #error (torch
    2.15 requires C++20; the old hard-coded -std=c++17 stopped there)."""
    monkeypatch.delenv("SPARGE_CXX_STD", raising=False)
    monkeypatch.setenv("SPARGE_WITH_CUDA", "0")
    monkeypatch.setattr(setup_py, "write_build_info", lambda with_cuda: tmp_path)  # not python/build
    flags = setup_py.extension().extra_compile_args["cxx"]
    std = [f for f in flags if f.startswith("-std=")]
    include = Path(torch.__file__).parent / "include"
    result = subprocess.run(
        [os.environ.get("CXX", "c++"), "-E", *std, "-I", str(include), "-x", "c++", "-",
         "-o", os.devnull],
        input=b"#include <ATen/ATen.h>\n", capture_output=True)
    assert result.returncode == 0, f"{std}: {result.stderr.decode()[-2000:]}"


NINJA_LOG = textwrap.dedent("""\
    [1/9] c++ -MMD -c src/common/error_text.cc -o error_text.o -std=c++17
    FAILED: /x/python/build/temp/python/csrc/binding.o
    c++ -MMD -c /x/python/csrc/binding.cc -o binding.o -std=c++17
    In file included from /t/torch/include/torch/extension.h:5,
    /t/torch/include/ATen/ATen.h:9:2: error: #error C++20 or later compatible compiler is required to use ATen.
    /x/python/csrc/binding.cc:40:3: error: 'foo' was not declared in this scope
    ninja: build stopped: subcommand failed.
    RuntimeError: Error compiling objects for extension
    """)


def test_summary_names_the_first_error_and_the_cause(setup_py):
    summary = setup_py.failure_summary(NINJA_LOG, 17).splitlines()
    assert len(summary) == 3
    assert "did not build" in summary[0] and "-std=c++17" in summary[0]
    assert "ATen.h:9:2: error: #error C++20 or later" in summary[1]
    assert "needs C++20" in summary[2] and "SPARGE_CXX_STD=20" in summary[2]


@pytest.mark.parametrize("line, cause", [
    ("f.cu(12): error: identifier \"x\" is undefined", "compile error in Sparge's sources"),
    ("g++: fatal error: Killed signal terminated program cc1plus", "MAX_JOBS=1"),
    ("a.cc:1:10: fatal error: Python.h: No such file or directory", "header is missing"),
    ("/usr/bin/ld: a.o: undefined reference to `f()'", "link error"),
    ("crt/host_config.h:143:2: error: #error -- unsupported GNU version! gcc versions later "
     "than 13 are not supported!",
     "host compiler"),
])
def test_summary_causes(setup_py, line, cause):
    assert cause in setup_py.failure_summary(f"[1/2] c++ -c src/error.cc\n{line}\n", 20)


def test_failed_build_ends_with_the_summary(setup_py, tmp_path):
    """A real build_ext through setup.py's BuildExtension: the compiler's own output still
    appears, and the summary comes last (pip shows the end of the log)."""
    (tmp_path / "broken.cc").write_text("int f() { return undeclared_name; }\n")
    (tmp_path / "build.py").write_text(textwrap.dedent(f"""\
        import importlib.util
        from setuptools import setup
        from torch.utils import cpp_extension
        spec = importlib.util.spec_from_file_location("s", {str(ROOT / "setup.py")!r})
        s = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(s)
        setup(name="broken", script_args=["build_ext", "--build-temp", "tmp", "--build-lib", "lib"],
              ext_modules=[cpp_extension.CppExtension("broken", ["broken.cc"])],
              cmdclass={{"build_ext": s.BuildExtension}})
        """))
    result = subprocess.run([sys.executable, "build.py"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "MAX_JOBS": "1"})
    assert result.returncode != 0
    assert "undeclared_name" in result.stdout + result.stderr  # the log is still shown
    last = result.stderr.strip().splitlines()[-3:]
    assert last[0].startswith("error: sparge: the C++ extension did not build"), last
    assert "broken.cc:1:" in last[1] and "undeclared_name" in last[1], last
    assert "compile error" in last[2], last


@pytest.fixture(scope="module")
def backend():
    spec = importlib.util.spec_from_file_location("sparge_backend",
                                                  ROOT / "python" / "build_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("setuptools, has_wheel, wanted", [
    ("80.9.0", False, []),             # the pinned one: nothing to fetch, so pip install . is offline
    ("70.1.0", False, []),
    ("65.5.0", True, []),              # old setuptools with `wheel` builds too
    ("65.5.0", False, ["setuptools>=70.1"]),  # a fresh Python 3.11 venv after pip install torch==2.11
    (None, False, ["setuptools>=70.1"]),
])
def test_backend_asks_only_for_a_setuptools_that_builds_wheels(backend, monkeypatch, setuptools,
                                                               has_wheel, wanted):
    def version(name):
        assert name == "setuptools"
        if setuptools is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return setuptools

    monkeypatch.setattr(backend.importlib.metadata, "version", version)
    monkeypatch.setattr(backend.importlib.util, "find_spec",
                        lambda name: object() if has_wheel and name == "wheel" else None)
    assert backend.get_requires_for_build_wheel() == wanted
    if wanted:
        with pytest.raises(RuntimeError, match="needs setuptools>=70.1"):
            backend.build_wheel("unused")
