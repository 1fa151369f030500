#!/usr/bin/env bash
# Benchmarks 1-3 on a GPU machine whose image already has JAX (CUDA), PyTorch, transformers and
# peft, but not galley or its light dependencies (carried as wheels in .whl/, see
# docs/performance.md). Usage, from the repository root:
#     tests/benchmarks/gpu.sh [env] [compile] [train] [sample] [sample-f32] [compile-cached]
#                                [compile-no-autotune] [pack] [memory]
# The 0.5B model is made once in $MODEL_DIR and shared by the benchmarks.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
MODEL_DIR=${MODEL_DIR:-/tmp/galley-bench-0.5b}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site . \
    >/dev/null 2>&1 || { echo "installing galley failed"; exit 1; }
for what in "$@"; do
    echo "=== $what ($(date +%T))"
    case $what in
    env)
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
        python3 -c "import jax, jaxlib, flax, optax, torch, transformers, peft
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'torch', torch.__version__, 'transformers', transformers.__version__,
      'peft', peft.__version__)
print(jax.devices())" ;;
    compile) python3 tests/benchmarks/bench_compile.py --preset 0.5b --model-dir "$MODEL_DIR" ;;
    train) python3 tests/benchmarks/bench_train.py --preset 0.5b --model-dir "$MODEL_DIR" \
        --rounds "${ROUNDS:-2}" --steps "${STEPS:-10}" ;;
    sample) python3 tests/benchmarks/bench_sample.py --preset 0.5b --model-dir "$MODEL_DIR" \
        --rounds "${ROUNDS:-1}" ;;
    sample-f32)  # greedy agreement without bf16 rounding (and without TF32 in JAX's matmuls)
        JAX_DEFAULT_MATMUL_PRECISION=highest python3 tests/benchmarks/bench_sample.py \
            --preset 0.5b --model-dir "$MODEL_DIR" --dtype float32 --rounds 1 ;;
    compile-cached)  # twice, with a persistent compilation cache: the second is a rerun
        for run in first rerun; do
            echo "--- $run"
            python3 tests/benchmarks/bench_compile.py --preset 0.5b --model-dir "$MODEL_DIR" \
                --compilation-cache /tmp/galley-jax-cache
        done ;;
    compile-no-autotune)  # how much of the first step is XLA autotuning its GPU kernels
        XLA_FLAGS=--xla_gpu_autotune_level=0 python3 tests/benchmarks/bench_compile.py \
            --preset 0.5b --model-dir "$MODEL_DIR" ;;
    pack)  # packed vs padded SFT on chat rows of 16-1024 tokens (TRL too where installed)
        runs="galley-packed galley-padded"
        python3 -c "import trl" 2>/dev/null && runs="$runs trl"
        python3 tests/benchmarks/bench_pack.py --preset 0.5b --model-dir "$MODEL_DIR" --runs $runs ;;
    memory)  # XLA's memory analysis per lever (does unrolled remat save on a GPU?)
        python3 tests/benchmarks/bench_memory.py --preset 0.5b --model-dir "$MODEL_DIR" ;;
    *) echo "unknown benchmark $what"; exit 2 ;;
    esac
done
