"""The one compiled part: the delta's block search (see src/relaysync/transfer/_blocksearch.c).

Everything else is declared in pyproject.toml. Building needs gcc, python3-dev and
libxxhash-dev (scripts/install installs them).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relaysync.transfer._blocksearch",
            ["src/relaysync/transfer/_blocksearch.c"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
