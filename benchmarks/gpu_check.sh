#!/usr/bin/env bash
# One GPU run, everything in order of importance, each step held to the time left:
#   1. throughput: typical, fast and trainer rows (the first load decodes and caches the data),
#      and where the fast row's step time goes (--profile)
#   2. time to accuracy, recipe cifar_fast (120 s of training)
#   3. throughput: timm row
#   4. time to accuracy, recipe cifar_fast_30 (30 s of training)
#   5. the optimizer step alone, AdamW and Muon: milliseconds and kernels
#   6. throughput: compiled row
#   7. augmentation alone, eager and compiled (the cifar_fast setting)
# Logs (steps.log) and JSON land in $OUT (default runs/gpu_check), replacing those of an earlier
# run there (the bench merges rows into bench.json, so old rows would pass for new ones). Arrays
# are expanded as ${A[@]+"${A[@]}"}: bash before 4.4 calls an empty "${A[@]}" unbound under
# set -u. From the repository root:
#   VITLIB_DATA=path/to/cifar10 bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke                            # the same steps, tiny
set -u -o pipefail
OUT=${OUT:-runs/gpu_check}
LIMIT=${LIMIT:-400}  # seconds for the whole script
mkdir -p "$OUT"
rm -f "$OUT/steps.log" "$OUT/bench.json" "$OUT/tta120.json" "$OUT/tta30.json"
export PYTHONPATH=. PYTHONUNBUFFERED=1
export VITLIB_CACHE=${VITLIB_CACHE:-data/cache}
PY=${PY:-python3}
SMOKE=()
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=(--smoke); fi
START=$SECONDS
left() { echo $((LIMIT - (SECONDS - START))); }
# run NAME MIN_SECONDS MAX_SECONDS CMD...: skip if less than MIN_SECONDS are left; cap at MAX.
# Exit 124: stopped at the cap (SIGTERM); 137: killed 10 s later, still running (a training run
# only stops at a step boundary on SIGTERM, and a compilation can take longer than that)
run() {
    local name=$1 need=$2 cap=$3; shift 3
    local budget; budget=$(left)
    if [ "$budget" -lt "$need" ]; then echo "== $name: skipped, ${budget} s left"; return 1; fi
    [ "$budget" -gt "$cap" ] && budget=$cap
    echo "== $name (at $((SECONDS - START)) s, limit ${budget} s)"
    timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$OUT/steps.log"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - START)) s"
    return $rc
}
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }  # the exit status of a step cut at its cap

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
    2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, 'cpus', __import__('os').cpu_count())"

# keep at least 85 s for step 2, and stop a hung step at 200 s (it took 75-85 s on an H200)
cap=$(($(left) - 85)); [ "$cap" -lt 75 ] && cap=75; [ "$cap" -gt 200 ] && cap=200
run bench_fast 60 "$cap" $PY -m vitlib bench --rows typical,fast,trainer --json "$OUT/bench.json" \
    --profile fast --deadline 120 ${SMOKE[@]+"${SMOKE[@]}"}
rc=$?
if ! timed_out $rc && ! $PY -c "import json, sys; rows = json.load(open('$OUT/bench.json'))['rows']
sys.exit('fast' not in [r['name'] for r in rows])" 2>/dev/null; then
    # the fast row failed (not timed out): measure it again without CUDA graphs and with
    # PyTorch's own attention kernel
    run bench_fast_plain 160 90 $PY -m vitlib bench --rows fast,trainer \
        --fast-compile-mode default --attention default --no-ceilings --json "$OUT/bench.json" \
        ${SMOKE[@]+"${SMOKE[@]}"}
fi
# the attention kernel the fast row ran with (none: PyTorch's choice, or no fast row)
ATTENTION=$($PY -c "import json; rows = json.load(open('$OUT/bench.json'))['rows']
print(next(r['attention'] or '' for r in rows if r['name'] == 'fast'))" 2>/dev/null || true)
ATTENTION_FLAG=()
[ -n "$ATTENTION" ] && ATTENTION_FLAG=(--attention "$ATTENTION")

# 120 s of training when the time left allows it (about 60 s go to start-up, compilation,
# perhaps from the cache of step 1, about 10 validations and checkpoints, and the final
# scoring of raw/EMA weights with and without flip), else what is left. On an H100 (2026-11-28)
# the step took 165 s with 22 s of compilation, the 30 s one 71 s with 19 s; the caps leave room
# for longer compilations (FlexAttention, a new attention start)
budget() { local b=$(($(left) - 60)); [ "$b" -gt "$1" ] && b=$1; echo "$b"; }
run tta120 75 215 $PY benchmarks/time_to_accuracy.py --recipe cifar_fast \
    --budget "$(budget 120)" ${ATTENTION_FLAG[@]+"${ATTENTION_FLAG[@]}"} \
    --json "$OUT/tta120.json" ${SMOKE[@]+"${SMOKE[@]}"}
rc=$?
if [ $rc -ne 0 ] && ! timed_out $rc; then
    # a failure in the fast path: the same recipe without CUDA graphs and forced kernels (in
    # the CPU rehearsals nothing compiles, and the flag, doing nothing, would be refused)
    PLAIN=(--compile-mode default)
    if [ ${#SMOKE[@]} -gt 0 ] || [[ "$PY" == *micro_model* ]]; then PLAIN=(); fi
    run tta120_plain 100 190 $PY benchmarks/time_to_accuracy.py --recipe cifar_fast \
        --budget "$(budget 120)" ${PLAIN[@]+"${PLAIN[@]}"} --json "$OUT/tta120.json" \
        ${SMOKE[@]+"${SMOKE[@]}"}
fi
run bench_timm 60 75 $PY -m vitlib bench --rows timm --json "$OUT/bench.json" \
    --no-ceilings ${SMOKE[@]+"${SMOKE[@]}"}
run tta30 75 120 $PY benchmarks/time_to_accuracy.py --recipe cifar_fast_30 \
    ${ATTENTION_FLAG[@]+"${ATTENTION_FLAG[@]}"} --json "$OUT/tta30.json" \
    ${SMOKE[@]+"${SMOKE[@]}"}
run optimizer 20 40 $PY benchmarks/optimizer_step.py ${SMOKE[@]+"${SMOKE[@]}"}
run bench_compiled 55 70 $PY -m vitlib bench --rows compiled --json "$OUT/bench.json" \
    --no-ceilings ${SMOKE[@]+"${SMOKE[@]}"}

run augment 45 60 $PY benchmarks/augment_speed.py --setting cifar_fast --steps 20 \
    ${SMOKE[@]+"${SMOKE[@]}"}

echo "== summary after $((SECONDS - START)) s"
$PY -m vitlib bench --rows "" --json "$OUT/bench.json" --no-ceilings \
    ${SMOKE[@]+"${SMOKE[@]}"} 2>&1 | tail -n 8
grep -h "^RESULT" "$OUT/steps.log"
exit 0
