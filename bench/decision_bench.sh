#!/usr/bin/env bash
# The decision rule's benchmark (issue "Whom to steer"), as run on 2026-12-01 for docs/results.md:
# the default profile (seed 0) on XSTest, OKTest, HarmfulQ and the jailbreak split (original /
# scans / scans-v1, greedy, 64 tokens) with MMLU prompts judged harmful (4 per subject), the
# taxonomy anchors' test split (looked at once), XSTest --limit 100 on the larger embedded model,
# seeds 1-2 on the first 100 prompts of each split, and HumanEval (164 problems). About 90
# minutes on 2 CPU cores. Resumable: rerun after an interruption.
#   SCANS_DATA=../shared/data bash bench/decision_bench.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/runs/decision}"
data="${SCANS_DATA:-../shared/data}"
mkdir -p "$out"
common=(--quiet bench --data-dir "$data" --max-new-tokens 64 --ppl-texts 0)
safety="xstest-safe,xstest-unsafe,oktest,harmfulq"
fit() { [ -f "$2/profile.json" ] || scans --quiet fit "${@:3}" --seed "$1" --out "$2"; }
stamp() { echo "[decision_bench] $(date -u +%H:%M:%S) $*"; }

stamp "seed 0"
fit 0 "$out/profile-seed0"
scans "${common[@]}" --profile "$out/profile-seed0" --out "$out/seed0" --splits "$safety,jailbreak" \
    --methods original,scans,scans-v1 --mmlu-limit 4 --capability-methods original,scans,scans-v1
stamp "taxonomy test split"
python -c "
import json, sys
from scans.pool import shipped_taxonomy
for i in shipped_taxonomy('test'):
    print(json.dumps({'prompt': i.prompt, 'label': 'harmful' if i.harmful else 'benign', 'type': i.type}))
" > "$out/taxonomy_test.jsonl"
scans "${common[@]}" --profile "$out/profile-seed0" --out "$out/taxonomy-test" --splits "" \
    --file "$out/taxonomy_test.jsonl" --label-column label --methods original,scans,scans-v1 --mmlu-limit 0
for seed in 1 2; do
    stamp "seed $seed"
    fit "$seed" "$out/profile-seed$seed"
    scans "${common[@]}" --profile "$out/profile-seed$seed" --out "$out/seed$seed" --splits "$safety" \
        --limit 100 --methods original,scans --mmlu-limit 2 --capability-methods scans
done
stamp "Qwen2.5-Coder-1.5B (embedded:qwen-1.5b)"
fit 0 "$out/profile-1.5b" --model embedded:qwen-1.5b
scans "${common[@]}" --model embedded:qwen-1.5b --profile "$out/profile-1.5b" --out "$out/qwen-1.5b" \
    --splits xstest-safe,xstest-unsafe --limit 100 --methods original,scans --mmlu-limit 0
stamp "HumanEval"
scans "${common[@]}" --profile "$out/profile-seed0" --out "$out/humaneval" --splits "" --mmlu-limit 0 \
    --humaneval-limit 164 --capability-methods original,scans,always-away --methods original
stamp "done"
