#!/usr/bin/env bash
# One GPU-machine run of the usual checks and benchmarks, for the device tool (`run`): its command
# line is limited to 2,000 characters, and the setup below was retyped in every session.
#
#   bash benchmarks/gpu_run.sh [--triton39] STEP...
#
# Steps (in the order given; each writes its log and JSON under $OUT, default /tmp/out):
#   tests      pytest -m gpu on the kernels, the mixer, the LM and chunked training
#   scan       benchmarks/scan.py over the anchor grid, with --model (needs .anchors/)
#   kernels    benchmarks/scan.py --kernel-times (GPU time of each kernel of one fwd+bwd)
#   dna        benchmarks/dna_long.py at L = 2^20, plain and with --chunk-tokens 131072
#   generate   benchmarks/audio_generate.py, SaShiMi and Mamba LM at batch 1 and 256
#
# Carried folders (ignored by git, named in the run's `carry`): .whlcore (wheels the image lacks:
# pyfaidx, biopython, soundfile, soxr, cffi, pycparser), .anchors (shared/anchors), and with
# --triton39 .t39/triton39.tar.xz (benchmarks/pack_triton.py). The image's Triton is 3.6.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=/tmp/site
if [ -d .whlcore ] && [ ! -d "$site" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whlcore/*.whl 2>/dev/null \
        || echo "could not install .whlcore (the wheels are for the GPU machine's Python 3.12)"
fi
export PYTHONPATH="$site:$PWD"
if [ "${1:-}" = "--triton39" ]; then
    shift
    [ -d /tmp/t39/triton ] || python3 -c "import tarfile; tarfile.open('.t39/triton39.tar.xz').extractall('/tmp/t39')"
    # In-tree backends: the pack leaves out the AMD one its entry points name.
    export TRITON_BACKENDS_IN_TREE=1 PYTHONPATH="/tmp/t39:$PYTHONPATH"
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, triton.__file__)"
tag=triton$(python3 -c "import triton; print(''.join(triton.__version__.split('.')[:2]))")  # e.g. triton36
anchors=.anchors/mamba_ssm_cuda_h100.json
for step in "$@"; do
    echo "== $step ($tag)"
    case $step in
        tests)
            python3 -m pytest -q -m gpu tests/kernels tests/models/test_mixer.py tests/models/test_lm.py \
                tests/training/test_chunked.py tests/training/test_deterministic.py 2>&1 | tee "$OUT/tests_$tag.log" | tail -3 ;;
        scan)
            python3 benchmarks/scan.py --anchors "$anchors" --model --json "$OUT/scan_$tag.json" 2>&1 \
                | grep -v '^{' | tee "$OUT/scan_$tag.log" | tail -24 ;;
        kernels)
            python3 benchmarks/scan.py --anchors "$anchors" --skip-grid --kernel-times \
                --json "$OUT/kernels_$tag.json" 2>&1 | grep '^batch' | cut -c1-400 ;;
        dna)
            python3 benchmarks/dna_long.py --min-log2 20 --max-log2 20 --checkpoint off \
                --json "$OUT/dna_$tag.json" 2>&1 | tail -2
            python3 benchmarks/dna_long.py --min-log2 20 --max-log2 20 --checkpoint off --chunk-tokens 131072 \
                --json "$OUT/dna_chunked_$tag.json" 2>&1 | tail -2 ;;
        generate)
            python3 benchmarks/audio_generate.py --device cuda --no-eager --stack-step default --seconds 2 \
                --repeats 2 --batch-sizes 1 256 --out "$OUT/generate_$tag.json" 2>&1 | tail -6 ;;
        *)
            echo "unknown step: $step" >&2; exit 2 ;;
    esac
done
