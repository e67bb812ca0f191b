"""sgc_jax: semantic visual tokenizers (SGC-VQGAN and friends) in JAX/Flax."""

import setuptools

# Ranges whose ends were tested: the whole suite on Python 3.11 with jax 0.10.2
# (what CI installs), on Python 3.12 with jax 0.11.2 and with jax 0.12.0.1 (flax
# 0.12.12, orbax-checkpoint 0.12.8, optax 0.2.8); CI adds a short run on the
# newest end. Widen them only after running the suite on the new versions.
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.13",
    "jaxlib>=0.10.0,<0.13",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.0,<0.9",
    "ml-collections>=1.1.0,<1.2",
    "chex>=0.1.92,<0.2",
    "numpy>=2.0,<3",
    "pillow>=11.0,<14",
    "scipy>=1.13,<2",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",  # TensorBoard event files without TensorFlow
    # CLIP's tokenizer: regex for its \p{L}/\p{N} split pattern, ftfy for its text cleaning.
    "regex>=2024.4,<2027",
    "ftfy>=6.1,<7",
    # jax.export's serialization (the inference bundle) needs it; jax does not
    # declare it.
    "flatbuffers>=24.3.25,<26",
    # tensorflow-datasets needs it for builders defined in a package, but does
    # not declare it.
    "importlib_resources>=6.0",
]

setuptools.setup(
    name="sgc_jax",
    version="0.1.0",
    description="Semantic visual tokenizers in JAX/Flax: SGC-VQGAN, SlotCon, ACSeg, PAT",
    packages=setuptools.find_packages(include=["sgc_jax", "sgc_jax.*"]),
    # jax >= 0.11 needs Python >= 3.12; 3.13 is untested.
    python_requires=">=3.11,<3.13",
    classifiers=["Programming Language :: Python :: 3.11",
                 "Programming Language :: Python :: 3.12"],
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # tensorflow-cpu: only so that tests can build the catalog builders'
        # DatasetInfo for tfds.testing.mock_data; sgc_jax never imports it.
        # scikit-image: its wheel's photographs make the real-image data set
        # of the codebook-usage tests (tests/real_textures.py).
        "test": ["pytest>=8.0,<10", "pytest-xdist>=3.5,<4",
                 "tensorflow-cpu>=2.20,<2.22", "scikit-image>=0.24,<0.27"],
        # CUDA 13 needs an NVIDIA driver >= 580; CUDA 12 runs on older ones.
        "cuda12": ["jax[cuda12]>=0.10.0,<0.13"],
        "cuda13": ["jax[cuda13]>=0.10.0,<0.13"],
        "cuda": ["jax[cuda12]>=0.10.0,<0.13"],  # the name of earlier releases
        "tpu": ["jax[tpu]>=0.10.0,<0.13"],
        # torch: to read published PyTorch weights, and the bench versus the
        # official PyTorch code; einops: taming-transformers' quantizer imports it.
        "torch": ["torch>=2.9,<2.15", "einops>=0.7,<1"],
    },
    entry_points={"console_scripts": [
        "sgc-jax=sgc_jax.main:run",
        "sgc-prepare-folder=sgc_jax.data.folder:run",
        "sgc-tokenize=sgc_jax.bundle.cli:tokenize_main",
        "sgc-detokenize=sgc_jax.bundle.cli:detokenize_main",
        "sgc-segment=sgc_jax.bundle.cli:segment_main",
    ]},
)
