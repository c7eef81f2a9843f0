"""Build and install rba_plugin.

The compiled extension ``rba_plugin._C`` holds the multi-scale deformable attention kernels.
The CPU kernels are always built. The CUDA kernels are added when a CUDA toolkit is found and
either a GPU is visible or ``FORCE_CUDA=1`` is set (cross-building on a machine without a GPU:
``FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install -e .``).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = Path("rba_plugin") / "csrc"

# torch.utils.cpp_extension resolves CUDA_HOME when it is imported and, with no hint, guesses
# /usr/local, where it then fails to link -lcudart: point it at the toolkit before the import.
if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    return CUDA_HOME is not None and (force or torch.cuda.is_available())


def build_extensions() -> list:
    sources = sorted(glob.glob(str(CSRC / "*.cpp")) + glob.glob(str(CSRC / "cpu" / "*.cpp")))
    # OpenMP turns ATen's parallel_for into real threads inside the extension.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if _want_cuda():
        extension = CUDAExtension
        sources += sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--use_fast_math"]
    return [
        extension(
            "rba_plugin._C",
            sources,
            include_dirs=[str(ROOT / CSRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="rba_plugin",
    version="0.1.0",
    description="Detectron2 plugin for open-world semantic segmentation (RbA on Mask2Former)",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets")),
    python_requires=">=3.10",
    ext_modules=build_extensions(),
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
