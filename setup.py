"""sparsejax: train sparse neural networks better, with any mask (JAX/Flax)."""

from setuptools import find_packages, setup

# Upper bounds are the newest releases tested here (Python 3.11, CPU).
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.13",
    "jaxlib>=0.10.0,<0.13",
    "flax>=0.12.7,<0.13",  # nnx.as_pure (sparse_training with NNX states)
    "optax>=0.2.5,<0.3",
    "chex>=0.1.90,<0.2",
    "ml-collections>=1.0.0,<1.2",
    "numpy>=1.26,<2.6",
    "tensorflow-datasets>=4.9.8,<4.10",
    "orbax-checkpoint>=0.11.0,<0.13",
    "grain>=0.2.10,<0.3",
    "scikit-learn>=1.4,<1.10",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<2.7",
    "absl-py>=2.1,<3",
    "pillow>=10,<14",
    "matplotlib>=3.8,<3.12",  # sparsejax.analysis.plots
    # tfds 4.9.10 uses importlib_resources without declaring it.
    "importlib-resources>=6,<8",
]

setup(
    name="sparsejax",
    version="0.1.0",
    description="Train sparse neural networks better, with any mask: DST and ToST in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sparsejax", "sparsejax.*", "launch", "configs"]),
    python_requires=">=3.11,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Preparing CIFAR-10/100 with tfds needs TensorFlow (~600 MB); training and reading never
        # import it, and digits and TinyImageNet need none.
        "cifar": ["tensorflow-cpu>=2.16,<2.22"],
        # nbclient + ipykernel execute notebooks/research.ipynb in the tests.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7",
                 "pytest-timeout>=2.3,<3",
                 "nbclient>=0.10,<0.12", "nbformat>=5.9,<6", "ipykernel>=6.29,<8"],
        # PyTorch mask import. Pinned to the CPU build tested here; any torch >= 2.1 reads the files.
        "torch": ["torch==2.13.0"],
    },
)
