"""Builds clipwidgets' optional float16 search kernel (clipwidgets/searching/_dot16.c); everything
else is in pyproject.toml. Without a C compiler the install goes on without it, and exact search
uses torch's kernel (clipwidgets/searching/native.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("clipwidgets.searching._dot16", ["clipwidgets/searching/_dot16.c"],
                             extra_compile_args=["-O3"], optional=True)])
