"""Builds clipwidgets' optional search kernels (clipwidgets/searching/_dot16.c: float16 scores and
float64 re-scoring, _dot8.c: int8 scores, _top.c: top-n selection); everything else is in
pyproject.toml. Without a C compiler the install goes on without them, and exact search uses torch's
and BLAS's kernels instead (clipwidgets/searching/native.py)."""

from setuptools import Extension, setup

KERNELS = ("_dot16", "_dot8", "_top")

setup(ext_modules=[Extension(f"clipwidgets.searching.{name}", [f"clipwidgets/searching/{name}.c"],
                             depends=["clipwidgets/searching/claim.h"], extra_compile_args=["-O3"],
                             optional=True) for name in KERNELS])
