#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels that launch/device_check.sh
# installs on a GPU machine that has no package registry: the packages sgc_jax
# needs beyond what such a machine's image already holds (jax with its CUDA
# plugin, flax, optax, orbax-checkpoint, chex, numpy, scipy, pillow, protobuf,
# pyarrow ...), for Python 3.12 on manylinux x86-64. Run it here, where the
# registries are reachable; the device call carries .whl.
#   launch/device_wheels.sh            (18 wheels, about 12 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
rm -rf "$DEST" && mkdir -p "$DEST"
# Versions inside setup.py's ranges; their dependencies that the image lacks too.
BINARY=(
  "tensorflow-datasets==4.9.10" "grain==0.2.18" "array-record==0.8.6" "ml-collections==1.1.0"
  "tensorboardX==2.6.5" "ftfy==6.3.1" "wcwidth==0.9.4" "dm-tree==0.1.10"
  "tensorflow-metadata==1.21.0" "googleapis-common-protos==1.76.0" "immutabledict==4.3.1"
  "simple-parsing==0.1.9" "docstring-parser==0.18.0" "termcolor==3.3.0" "toml==0.10.2"
  "importlib-resources==7.1.0" "portpicker==1.6.0"
)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" "${BINARY[@]}"
# Published as a source archive only: pure Python, so a wheel built here runs there.
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" "promise==2.3"
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
