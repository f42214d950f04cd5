#!/usr/bin/env bash
# Paper Figure 4's four hyper-parameter columns on the embedded benchmark, each one `stprivacy sweep`
# of the recipe row's run config (configs/synthetic_small.json) over seeds 0 1 2:
#
#   model.alpha          0.5, 0.7, 0.9         the training keep ratio (alpha ** m kept after PSB m)
#   model.tubelet        [1,8,8] [2,8,8] [4,8,8]   the tubelet length dT (8-frame clips: 8, 4, 2 time steps)
#   train.lambda_action  0.25, 0.5, 1          lambda_A of the adversarial objective
#   train.lambda_privacy 0.25, 0.5, 1          lambda_P
#
#   bash benchmarks/fig4_sweeps.sh [out-dir]      (default runs/fig4; about an hour on 2 cores)
#
# Two sweeps run at a time, one thread each, so both cores stay busy. Rerunning reads
# finished points back and resumes stopped ones. Each sweep writes OUT/NAME/sweep.{json,md,png};
# docs/fig4_sweeps.md carries the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/fig4}"
CONFIG=configs/synthetic_small.json
SEEDS=(0 1 2)
sweep() {  # NAME SETTING
    stprivacy sweep --config "$CONFIG" --set "$2" --seeds "${SEEDS[@]}" --out "$OUT/$1" --threads 1 \
        --no-progress > "$OUT/$1.log" 2>&1
}
mkdir -p "$OUT"
(sweep alpha model.alpha=0.5,0.7,0.9 && sweep lambda_action train.lambda_action=0.25,0.5,1) &
first=$!
(sweep tubelet "model.tubelet=[1,8,8],[2,8,8],[4,8,8]" && sweep lambda_privacy train.lambda_privacy=0.25,0.5,1) &
second=$!
status=0
wait "$first" || status=1
wait "$second" || status=1
for name in alpha tubelet lambda_action lambda_privacy; do
    [ -f "$OUT/$name/sweep.md" ] && cat "$OUT/$name/sweep.md" || echo "$name: failed, see $OUT/$name.log"
done
exit "$status"
