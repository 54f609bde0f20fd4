"""Build the optional C accelerator (everything else is in pyproject.toml).

``lcow._tarscan`` parses tar headers and ``lcow._ext4pack`` packs inode tables and directory
blocks; both have pure-Python equivalents that are used when the extension is absent, so a
machine without a C compiler still installs (``optional=True``).
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension(
            "lcow._tarscan",
            sources=["src/lcow/_native/tarscan.c"],
            extra_compile_args=_FLAGS,
            optional=True,
        ),
        Extension(
            "lcow._ext4pack",
            sources=["src/lcow/_native/ext4pack.c"],
            extra_compile_args=_FLAGS,
            optional=True,
        ),
    ],
)
