"""sgc_jax: semantic visual tokenizers (SGC-VQGAN and friends) in JAX/Flax."""

import setuptools

# Ranges are the ones CI installs and tests (Python 3.11): widen them only after
# running the test suite on the new versions.
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.11",
    "jaxlib>=0.10.0,<0.11",
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
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # tensorflow-cpu: only so that tests can build the catalog builders'
        # DatasetInfo for tfds.testing.mock_data; sgc_jax never imports it.
        # scikit-image: its wheel's photographs make the real-image data set
        # of the codebook-usage tests (tests/real_textures.py).
        "test": ["pytest>=8.0,<10", "pytest-xdist>=3.5,<4",
                 "tensorflow-cpu>=2.20,<2.22", "scikit-image>=0.24,<0.27"],
        "cuda": ["jax[cuda12]>=0.10.0,<0.11"],
        "tpu": ["jax[tpu]>=0.10.0,<0.11"],
        # torch: to read published PyTorch weights, and the bench versus the
        # official PyTorch code; einops: taming-transformers' quantizer imports it.
        "torch": ["torch>=2.9,<2.15", "einops>=0.7,<1"],
    },
    entry_points={"console_scripts": [
        "sgc-jax=sgc_jax.main:run",
        "sgc-prepare-folder=sgc_jax.data.folder:run",
        "sgc-tokenize=sgc_jax.tokenizer_cli:tokenize_main",
        "sgc-detokenize=sgc_jax.tokenizer_cli:detokenize_main",
        "sgc-segment=sgc_jax.tokenizer_cli:segment_main",
    ]},
)
