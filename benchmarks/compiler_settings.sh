#!/usr/bin/env bash
# The bench's fast row under other torch.compile (Inductor) settings, each in a process of its
# own (Inductor reads TORCHINDUCTOR_* when it is imported), with the profile of its step.
# The first setting also writes the generated code (kernels and the launching wrapper), with
# the rest of its error output, to $OUT/output_code.txt.gz (the others: $OUT/stderr.txt). Each
# line of SETTINGS is "name|environment|bench flags"; options that no environment variable
# reaches go in as bench flags (--inductor NAME=VALUE).
#   VITLIB_DATA=path/to/cifar10 bash benchmarks/compiler_settings.sh     # on the GPU machine
#   bash benchmarks/compiler_settings.sh --cpu-smoke                     # the same steps, tiny
set -u -f -o pipefail  # -f: no file-name expansion of the settings' words
OUT=${OUT:-runs/compiler_settings}
LIMIT=${LIMIT:-330}  # seconds for the whole script
CAP=${CAP:-100}      # seconds for one setting
mkdir -p "$OUT"
rm -f "$OUT/settings.log" "$OUT/stderr.txt" "$OUT/output_code.txt" "$OUT/output_code.txt.gz"
export PYTHONPATH=. PYTHONUNBUFFERED=1
export VITLIB_CACHE=${VITLIB_CACHE:-data/cache}
PY=${PY:-python3}
ATTENTION=${ATTENTION:-flex}
SMOKE=()
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=(--smoke); ATTENTION=math; fi
# Tried on one H200 (2026-11-28, benchmarks/NOTES.md): TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 (no
# change) and TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 (not compiled within 100 s)
SETTINGS=${SETTINGS:-"unchanged||
combo kernels||--inductor combo_kernels=True
max-autotune||--fast-compile-mode max-autotune
batch 2048||--batch-size 2048
no split reductions|TORCHINDUCTOR_SPLIT_REDUCTIONS=0|"}
START=$SECONDS
first=1
while IFS='|' read -r name environment flags; do
    [ -z "$name$environment$flags" ] && continue  # a blank line
    left=$((LIMIT - (SECONDS - START)))
    if [ "$left" -lt 45 ]; then echo "== $name: skipped, $left s left"; continue; fi
    [ "$left" -gt "$CAP" ] && left=$CAP
    echo "== $name ($environment $flags; at $((SECONDS - START)) s, limit $left s)" \
        | tee -a "$OUT/settings.log"
    logs=() err="$OUT/stderr.txt"
    if [ $first = 1 ]; then logs=(TORCH_LOGS=output_code); err="$OUT/output_code.txt"; first=0; fi
    # shellcheck disable=SC2086  # the environment and the flags are split into words
    env ${logs[@]+"${logs[@]}"} $environment timeout -k 10 "$left" \
        $PY -m vitlib bench --rows fast --attention "$ATTENTION" --no-ceilings --profile fast \
        $flags ${SMOKE[@]+"${SMOKE[@]}"} </dev/null 2>>"$err" | tee -a "$OUT/settings.log" \
        | grep -E "^fast:|^profile|^  [a-z(]|^ +[0-9.]+ ms"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - START)) s"
done <<< "$SETTINGS"
gzip -f "$OUT/output_code.txt" 2>/dev/null
echo "== summary"
grep -E "^== |^fast:|^profile" "$OUT/settings.log" 2>/dev/null || echo "no setting ran"
