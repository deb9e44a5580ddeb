#!/bin/bash
# The decision-rule benchmark runs of docs/results.md, run from the repository root:
#   bash bench/decision_runs.sh WORKTREE RUNDIR PREVIOUS_RUNDIR
# (fits of seeds 0-2, the benchmark splits, the taxonomy test split, the jailbreak split, the
# 1.5B model, then seeds 1-2 on the full splits). WORKTREE: a frozen checkout whose src/ is run; the original answers are copied
# from PREVIOUS_RUNDIR so that only scans is generated.
set -x
WT=$1; R=$2; D3=$3
export PYTHONPATH=$WT/src
B="python -m scans.cli --quiet bench --data-dir ../shared/data --max-new-tokens 64 --ppl-texts 0"
mkdir -p $R
for s in 0 1 2; do [ -d $R/profile-seed$s ] || python -m scans.cli fit --seed $s --out $R/profile-seed$s > $R/fit-seed$s.log 2>&1; done
reuse() { mkdir -p $R/$1; grep '"method": "original"' $D3/$1/generations.jsonl > $R/$1/generations.jsonl; }
reuse seed0
$B --profile $R/profile-seed0 --out $R/seed0 --splits xstest-safe,xstest-unsafe,oktest,harmfulq --methods original,scans --mmlu-limit 1 --capability-methods original,scans > $R/seed0.log 2>&1
reuse taxonomy-test; cp $D3/taxonomy_test.jsonl $R/
$B --profile $R/profile-seed0 --out $R/taxonomy-test --splits '' --file $R/taxonomy_test.jsonl --label-column label --methods original,scans --mmlu-limit 0 > $R/taxonomy-test.log 2>&1
reuse jailbreak
$B --profile $R/profile-seed0 --out $R/jailbreak --splits jailbreak --methods original,scans --mmlu-limit 0 > $R/jailbreak.log 2>&1
[ -d $R/profile-1.5b ] || python -m scans.cli fit --model embedded:qwen-1.5b --seed 0 --out $R/profile-1.5b > $R/fit-1.5b.log 2>&1
reuse qwen-1.5b
$B --model embedded:qwen-1.5b --profile $R/profile-1.5b --out $R/qwen-1.5b --splits xstest-safe,xstest-unsafe --limit 100 --methods original,scans --mmlu-limit 0 > $R/qwen-1.5b.log 2>&1
# seeds 1 and 2 on the full sets (the original answers do not depend on the seed: seed 0's are reused)
for s in 1 2; do mkdir -p $R/seed$s; grep '"method": "original"' $D3/seed0/generations.jsonl > $R/seed$s/generations.jsonl
$B --profile $R/profile-seed$s --out $R/seed$s --splits xstest-safe,xstest-unsafe,oktest,harmfulq --methods original,scans --mmlu-limit 1 --capability-methods original,scans > $R/seed$s.log 2>&1; done
echo ALLDONE
