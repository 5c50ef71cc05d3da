"""Build the compiled extensions: the fast-path kernel and the normalizer of quirky lines. The rest
of the package is described in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lsif_agg.exposition._relabel",
            ["src/lsif_agg/exposition/_relabel.c"],
            depends=["src/lsif_agg/exposition/_tokens.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
        ),
        Extension(
            "lsif_agg.exposition._normalize",
            ["src/lsif_agg/exposition/_normalize.c"],
            depends=["src/lsif_agg/exposition/_tokens.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
        ),
    ]
)
