#!/usr/bin/env bash
# Download, on a machine with network, the wheels that scripts/gpu_check.sh installs on a GPU machine
# that has Python 3.12, torch and CUDA but lacks hydra-core and omegaconf and has an older transformers.
# They go to .whl/ (ignored by git; about 15 MB). transformers 5.24 is the newest that needs no newer
# huggingface-hub than such machines carry; antlr4 (hydra's parser) exists only as a source package,
# so its wheel is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "$@"
}
fetch transformers==5.24.0 hydra-core==1.3.2 omegaconf==2.3.0
python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
ls -la .whl
