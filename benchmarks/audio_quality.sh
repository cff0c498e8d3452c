#!/usr/bin/env bash
# Audio quality benchmark (issue 6): train on spoken digits (split by voice) and on piano (split by
# piece), then test NLL in bits/sample, a few generated clips and their spectrograms.
#   benchmarks/audio_quality.sh DIGITS_DIR PIANO_DIR OUT [DIGIT_STEPS] [PIANO_STEPS] [DIGIT_MIN] [PIANO_MIN]
# DIGITS_DIR from shared/data/make-digits.sh (files <digit>_<engine>-<voice>_r<k>.wav);
# PIANO_DIR from shared/data/make-piano.py (one file per piece; "-" skips the piano run). Each training run also stops at a
# wall-clock limit in minutes (max_minutes). The digits run validates DIGIT_VALIDATIONS times (default 8), the
# piano run PIANO_VALIDATIONS times (default 4); each exports the weights of its best validation (export_best).
set -euo pipefail
digits=$1; piano=$2; out=$3; digit_steps=${4:-1500}; piano_steps=${5:-400}; digit_min=${6:-4.5}; piano_min=${7:-2.5}
digit_val_every=$((digit_steps / ${DIGIT_VALIDATIONS:-8}))
piano_val_every=$((piano_steps > 0 ? piano_steps / ${PIANO_VALIDATIONS:-4} : 1))
mkdir -p "$out"
common=(--set progress=false --set num_workers=4)

# SC09 setting (recipe sc09: sashimi-sc09, 1 s windows, lr 2e-3, wd 0.1, clip 0.1); 15 voices, 3 held
# out for validation and 3 for test (split_seed 2 puts 9/3/3 voices in train/valid/test).
mambaseq train audio --data "$digits" --recipe sc09 --out "$out/digits" --max-steps "$digit_steps" \
    --set max_minutes="$digit_min" \
    --set 'group_pattern=^[a-z]+_(.+)_r[0-9]+' --set valid_fraction=0.2 --set test_fraction=0.2 --set split_seed=2 \
    --set lr_warmup_steps=$((digit_steps / 10)) --set val_every="$digit_val_every" \
    --set checkpoint_every="$digit_val_every" \
    "${common[@]}"
mambaseq eval audio --model "$out/digits/model" --json > "$out/digits_test.json"
mambaseq generate audio --model "$out/digits/model" --n 4 --seconds 1 --seed 0 --out "$out/digits/samples"
mambaseq eval audio --model "$out/digits/model" --data "$out/digits/samples" --plots "$out/digits/plots" --json \
    > "$out/digits_samples.json"

[ "$piano" = "-" ] && exit 0  # PIANO_DIR "-": the digits only

# Long context: recipe music (sashimi-sc09 at 2^16-sample windows here, length warmup from 2^13).
mambaseq train audio --data "$piano" --recipe music --out "$out/piano" --max-steps "$piano_steps" \
    --set max_minutes="$piano_min" \
    --seq-len 65536 --set warmup_stage_steps=$((piano_steps / 5)) --set lr_warmup_steps=$((piano_steps / 10)) \
    --set valid_fraction=0.1 --set test_fraction=0.1 --set val_every="$piano_val_every" \
    --set checkpoint_every="$piano_val_every" "${common[@]}"
mambaseq eval audio --model "$out/piano/model" --json > "$out/piano_test.json"
mambaseq generate audio --model "$out/piano/model" --n 2 --seconds 4 --seed 0 --out "$out/piano/samples"
mambaseq eval audio --model "$out/piano/model" --data "$out/piano/samples" --plots "$out/piano/plots" --json \
    > "$out/piano_samples.json"
