from setuptools import find_packages, setup

setup(
    name="dml_csr",
    version="0.1.0",
    description="DML-CSR (CVPR 2022) and FP-LIIF (CVPR 2023) face parsing: training, evaluation, inference",
    packages=find_packages(include=["dml_csr", "dml_csr.*"]),
    package_data={"dml_csr": ["configs/**/*.yaml", "configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.13", "numpy", "opencv-python-headless>=4.8,<5", "pyyaml", "tqdm",
                      'yuface>=2023.5.1; python_version < "3.12" and platform_system != "Darwin"'],
)
