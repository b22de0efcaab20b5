from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "fedgmi_mpi" / "__init__.py").read_text(), version)

setup(
    name="fedgmi-mpi",
    version=version["__version__"],
    description="MPI simulator for FedGMI: federated learning of mixtures of inherent distributions",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fedgmi_mpi", "fedgmi_mpi.*"]),
    install_requires=[
        "numpy>=1.23",
        "torch>=2.1,<3",  # a range for users; the dev/CI install pins the CPU build (requirements-dev.txt)
        "mpi4py>=3.1",
        "h5py>=3.8",
        "click>=8.1",
        "scikit-learn>=1.2",  # load_digits ships inside the package: nothing is downloaded
        "scipy>=1.9",
        "pyyaml>=6",
        "pandas>=1.5",  # fedgmi analyze / report / the analysis API (never imported by a run)
        "matplotlib>=3.6",  # fedgmi report's plots (Agg backend: no display needed)
    ],
    extras_require={
        "mpich": ["mpich"],  # pip's MPICH: gives mpiexec on a machine without a system MPI
        "test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["fedgmi=fedgmi_mpi.cli:main"]},
)
