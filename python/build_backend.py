"""In-tree PEP 517 backend: setuptools, run against the environment's own PyTorch.

The extension must be compiled against the PyTorch that will import it. pip's build isolation
hides the environment's site-packages and would download a second PyTorch (impossible offline,
and possibly another version), so this backend puts the environment's site-packages back on
sys.path and asks pip for nothing when the environment can build. `pip install
--no-build-isolation .` needs none of this.

The one thing it may ask for is setuptools >= 70.1 (which builds wheels by itself): a venv of
Python 3.11 starts with setuptools 65.5, which torch 2.11 accepts, and which without the `wheel`
package fails with "invalid command 'bdist_wheel'". pip installs it into the isolated build
environment, whose entries come before the ones appended here.
"""
import importlib.metadata
import importlib.util
import re
import sys
import sysconfig

for _key in ("purelib", "platlib"):
    _path = sysconfig.get_paths()[_key]
    if _path not in sys.path:
        sys.path.append(_path)

MIN_SETUPTOOLS = (70, 1)
_REQUIREMENT = f"setuptools>={MIN_SETUPTOOLS[0]}.{MIN_SETUPTOOLS[1]}"


def missing_requirements():
    """[] when the setuptools on sys.path can build a wheel, else [_REQUIREMENT]."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return [_REQUIREMENT]
    if tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= MIN_SETUPTOOLS:
        return []
    return [] if importlib.util.find_spec("wheel") else [_REQUIREMENT]


def _meta():
    missing = missing_requirements()
    if missing:  # only with --no-build-isolation: pip would have installed it otherwise
        raise RuntimeError(f"building sparge needs {missing[0]} (or the `wheel` package) in this "
                           f"environment: python -m pip install '{missing[0]}'")
    from setuptools import build_meta
    return build_meta


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _meta().build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    return _meta().build_sdist(sdist_directory, config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _meta().prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _meta().build_editable(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _meta().prepare_metadata_for_build_editable(metadata_directory, config_settings)


# Everything else is already installed; asking pip for more (e.g. `wheel`) would fail offline.
def get_requires_for_build_wheel(config_settings=None):
    return missing_requirements()


def get_requires_for_build_sdist(config_settings=None):
    return missing_requirements()


def get_requires_for_build_editable(config_settings=None):
    return missing_requirements()
