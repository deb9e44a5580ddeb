#!/usr/bin/env bash
# The whole benchmark on one model (default: the embedded Qwen2.5-Coder-0.5B-Instruct), every
# method, XSTest safe/unsafe, OKTest, HarmfulQ (64 new tokens, greedy), MMLU (10 questions per
# subject; original, scans and always-away, which steers every prompt) and perplexity of 200
# TruthfulQA best answers, then the report. Resumable: rerun the
# same command after an interruption. Extra arguments go to `scans bench` (e.g. --limit 8).
#   SCANS_DATA=../shared/data bash bench/run_bench.sh [--model M] [--out DIR] ...
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/runs/embedded"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
start=$(date +%s)
scans bench --out "$out" --data-dir "${SCANS_DATA:-../shared/data}" --max-new-tokens 64 \
    --mmlu-limit 10 --ppl-texts 200 --capability-methods original,scans,always-away "${args[@]}"
echo "[run_bench] wall time $(( $(date +%s) - start )) s; report: $out/report.html"
