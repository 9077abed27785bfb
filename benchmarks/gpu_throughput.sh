#!/usr/bin/env bash
# The prepared GPU measurement of issue 21 (docs/throughput.md): every training script x {eager, --compile,
# --cudagraphs} and the official JAX FQL and QAM, in one command that ends within 8 minutes on one GPU.
#
#   bash benchmarks/gpu_throughput.sh prepare [DIR] [FQL_CHECKOUT] [QAM_CHECKOUT]
#       on a machine with PyPI: the wheels a bare GPU machine lacks -> DIR/wheels (pip download, nothing installed),
#       and the official agents at their pinned commits -> DIR/official/{fql,qam} (git archive of agents/ utils/).
#       DIR defaults to ~/.cache/flowrl/gpu (outside the repository); never commit it.
#   bash benchmarks/gpu_throughput.sh [--quick] [more benchmarks/throughput.py flags]
#       on the GPU machine: installs from $GPU_DIR/wheels whatever of the needed packages does not import, then runs
#       benchmarks/throughput.py --cuda; writes docs/results/throughput_gpu.csv (and a copy + the log to $OUT if set).
#       GPU_DIR defaults to .gpu in the repository root (for a device that receives only the working tree: copy
#       DIR there, add /.gpu/ to .git/info/exclude and carry it); else ~/.cache/flowrl/gpu.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
FQL_COMMIT=719d044   # seohongpark/fql
QAM_COMMIT=f93efd2   # ColinQiyangLi/qam
# what the GPU image may lack (its torch, jax, flax, optax, chex, numpy, h5py, tensorboard, tqdm, typer, ... are used
# as they are): our scripts need the first five modules, the official agents the last three
MODULES="gymnasium, mujoco, minari, tyro, gymnasium_robotics, distrax, ml_collections, tensorflow_probability"
# (mujoco-studio, mujoco's viewer, is left out: `import mujoco` does not need it; 13 MB)
WHEELS=(gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.0 mujoco-core==4.0.0 glfw==2.11.0 pyopengl==3.1.10
        minari==0.5.4 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 pettingzoo==1.27.0 ml-collections==1.1.0
        distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 gast==0.7.0 decorator==5.3.1)
# (tfp-nightly, not tensorflow-probability 0.25: that one fails to import under jax >= 0.10, the image has 0.11;
# with jax 0.10.2, flax 0.12.8, distrax 0.1.9 and this tfp-nightly both official agents ran here on the CPU)
# gymnasium-robotics (PointMaze, streaming_flow's evaluation env) is a 26 MB wheel, 45 MB of it the meshes of the
# Adroit hand and Franka kitchen: it is unpacked into DIR/site without them, so that everything fits the 64 MiB a
# device call carries with the repository (~30 MB)
ROBOTICS=gymnasium-robotics==1.4.2

if [[ "${1:-}" == prepare ]]; then
  dir=${2:-$HOME/.cache/flowrl/gpu}
  fql=${3:-/tmp/fql-official}
  qam=${4:-/tmp/qam-official}
  mkdir -p "$dir/wheels" "$dir/official/fql" "$dir/official/qam"
  # the GPU image's Python is CPython 3.12 on x86-64; pip matches each manylinux tag exactly, hence the list
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dir/wheels" "${WHEELS[@]}"
  tmp=$(mktemp -d)
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any -d "$tmp" "$ROBOTICS"
  "$PY" -m pip install -q --no-deps --no-compile --target "$dir/site" "$tmp"/*.whl
  rm -rf "$tmp" "$dir"/site/gymnasium_robotics/envs/assets/{adroit_hand,kitchen_franka,stls}
  git -C "$fql" archive "$FQL_COMMIT" agents utils LICENSE | tar -x -C "$dir/official/fql"
  git -C "$qam" archive "$QAM_COMMIT" agents utils LICENSE | tar -x -C "$dir/official/qam"
  du -sh "$dir"/*
  exit 0
fi

GPU_DIR=${GPU_DIR:-$([[ -d "$ROOT/.gpu" ]] && echo "$ROOT/.gpu" || echo "$HOME/.cache/flowrl/gpu")}
if ! "$PY" -c "import $MODULES" 2>/dev/null; then
  compgen -G "$GPU_DIR/wheels/*.whl" >/dev/null || { echo "error: some of $MODULES do not import and $GPU_DIR/wheels has no wheels (run: $0 prepare)" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flowrl-site "$GPU_DIR"/wheels/*.whl
  export PYTHONPATH=$GPU_DIR/site:/tmp/flowrl-site${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -c "import $MODULES" || { echo "error: $MODULES still do not all import after installing $GPU_DIR/wheels" >&2; exit 1; }
fi
FQL_OFFICIAL=${FQL_OFFICIAL:-$GPU_DIR/official/fql}
QAM_OFFICIAL=${QAM_OFFICIAL:-$GPU_DIR/official/qam}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, jax; print('torch', torch.__version__, torch.cuda.is_available(), '| jax', jax.__version__, jax.devices())" || true
cd "$ROOT"
set -o pipefail
[[ -n "${OUT:-}" ]] && mkdir -p "$OUT"
# benchmarks/throughput.py keeps to its own budget (420 s, --quick 200 s); the timeout only guards the 8 minutes
timeout 470 "$PY" benchmarks/throughput.py --cuda --fql-official-dir "$FQL_OFFICIAL" --qam-official-dir "$QAM_OFFICIAL" "$@" \
  2>&1 | tee ${OUT:+"$OUT/throughput_gpu.log"}
if [[ -n "${OUT:-}" ]]; then cp docs/results/throughput_gpu.csv "$OUT/"; fi
