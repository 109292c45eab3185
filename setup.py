"""The package: ``pip install .`` (or a wheel, ``pip wheel .``) and ``pip install -e .``
(scripts/install.sh).

One source of truth for each fact: the run-time requirements are requirements.txt's lines (less
the test tools, extra ``test``), and the configs are the checkout's configs/, which the package
ships as ``dml_csr/configs`` (dml_csr/config.py reads the installed copy where the checkout's is
absent; an editable install and a clone keep reading configs/).
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_ONLY = ("pytest", "selenium")   # requirements.txt lines that only the test suite needs


def requirements():
    """(run-time, test-only) requirement lines of requirements.txt, comments dropped."""
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    lines = [line for line in lines if line and not line.startswith("-")]   # pip options
    test = [line for line in lines if line.split(";")[0].strip().startswith(TEST_ONLY)]
    return [line for line in lines if line not in test], test


install_requires, test_requires = requirements()

setup(
    name="dml_csr",
    version="0.1.0",
    description="DML-CSR (CVPR 2022) and FP-LIIF (CVPR 2023) face parsing: training, evaluation, "
                "inference",
    license="MIT",
    classifiers=["Programming Language :: Python :: 3"],
    packages=find_packages(include=["dml_csr", "dml_csr.*"]) + ["dml_csr.configs"],
    package_dir={"dml_csr.configs": "configs"},
    package_data={"dml_csr.configs": ["*.yaml", "**/*.yaml"],
                  "dml_csr.serve": ["static/*.html", "static/*.js", "static/*.css"]},
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require={"test": test_requires},
    entry_points={"console_scripts": ["dml-csr = dml_csr.commands:main"]},
)
