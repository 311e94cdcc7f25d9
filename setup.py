"""The compiled parts: the delta's block search (src/relaysync/transfer/_blocksearch.c), the
read-lease probe of hot files (src/relaysync/_util/_leaseprobe.c), the scan's read of small files
(src/relaysync/watch/_smallread.c) and the write of a small file into a new directory
(src/relaysync/transfer/_newfiles.c).

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
        ),
        Extension(
            "relaysync._util._leaseprobe",
            ["src/relaysync/_util/_leaseprobe.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "relaysync.watch._smallread",
            ["src/relaysync/watch/_smallread.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "relaysync.transfer._newfiles",
            ["src/relaysync/transfer/_newfiles.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
