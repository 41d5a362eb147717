"""Builds clipwidgets' optional search kernels (clipwidgets/searching/_dot16.c: float16 scores,
_top.c: top-n selection); everything else is in pyproject.toml. Without a C compiler the install goes
on without them, and exact search uses torch's kernels (clipwidgets/searching/native.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(f"clipwidgets.searching.{name}", [f"clipwidgets/searching/{name}.c"],
                             extra_compile_args=["-O3"], optional=True) for name in ("_dot16", "_top")])
