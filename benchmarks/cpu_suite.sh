#!/usr/bin/env bash
# The CPU evidence for the foundation: reward models on IMDb and hh-rlhf pairs, DPO on IMDb pairs, all on the builtin
# SmolLM2-135M-Instruct. Run from the repository root after `make install`:  bash benchmarks/cpu_suite.sh [OUT]
# Needs ../shared/data (benchmarks/make_data.py builds the pair files). Each run's wall time and peak RSS go to OUT/*.time.
set -euo pipefail
OUT=${1:-bench_out}
RK=".venv/bin/rlhfkit"
[ -f "$OUT/data/imdb_pairs.train.jsonl" ] || .venv/bin/python benchmarks/make_data.py --out "$OUT/data"
for d in imdb hh; do head -n 100 "$OUT/data/${d}_pairs.eval.jsonl" > "$OUT/data/${d}_pairs.eval100.jsonl"; done
timed() { local name=$1; shift; /usr/bin/time -v -o "$OUT/$name.time" "$@" > "$OUT/$name.log" 2>&1; grep -E "Elapsed|Maximum resident" "$OUT/$name.time"; }

echo "== reward model, IMDb positive vs negative reviews"
timed rm_imdb $RK rm model.name_or_path=smollm2-135m-instruct \
  data.train=$OUT/data/imdb_pairs.train.jsonl data.eval=$OUT/data/imdb_pairs.eval100.jsonl \
  data.max_length=112 data.max_prompt_length=48 train.batch_size=8 train.max_steps=40 train.lr=5e-5 \
  train.scheduler=linear train.warmup_ratio=0.1 train.progress=false -o $OUT/rm_imdb
echo "== reward model, hh-rlhf harmless-base"
timed rm_hh $RK rm model.name_or_path=smollm2-135m-instruct \
  data.train=$OUT/data/hh_pairs.train.jsonl data.eval=$OUT/data/hh_pairs.eval100.jsonl data.skip_invalid=true \
  data.max_length=192 data.max_prompt_length=128 train.batch_size=4 train.max_steps=30 train.lr=3e-5 \
  train.warmup_ratio=0.1 train.progress=false -o $OUT/rm_hh
echo "== DPO, IMDb pairs"
timed dpo_imdb $RK dpo model.name_or_path=smollm2-135m-instruct \
  data.train=$OUT/data/imdb_pairs.train.jsonl data.eval=$OUT/data/imdb_pairs.eval100.jsonl data.max_rows=160 \
  data.max_length=112 data.max_prompt_length=48 train.batch_size=8 train.max_steps=20 train.lr=1e-5 \
  train.eval_every=10 loss.beta=0.1 eval_kl_samples=8 train.progress=false -o $OUT/dpo_imdb
