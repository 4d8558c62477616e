#!/bin/bash
# Cross-check `leanserve bench` against vLLM's own `vllm bench serve` on one server.
#   benchmarks/bench/crosscheck.sh [BASE_URL] [ROUNDS] [OUT] [MODE]
# MODE=alternate (default): the same load (random 128-token prompts, 64 output tokens, greedy,
#   ignore_eos, concurrency 8, 32 requests) from each tool in turn, order alternating per round.
# MODE=together: both tools at once, each at concurrency 4 (the server sees 8): both measure the
#   same server in the same seconds, so a machine whose speed drifts (a shared one) cannot bias the
#   comparison; the two should then agree on every figure.
# Each tool gets its own seeds, so neither hits prefixes the other cached.
set -euo pipefail
URL=${1:-http://127.0.0.1:8000}
ROUNDS=${2:-6}
OUT=${3:-benchmarks/out/crosscheck}
MODE=${4:-alternate}
CONC=$([ "$MODE" = together ] && echo 4 || echo 8)
MODEL_DIR=$(python -c 'from engine.catalogue import resolve_model; from service.settings import Settings; print(resolve_model("default", Settings().cache_dir).path)')
MODEL=$(curl -s "$URL/v1/models" | python -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
mkdir -p "$OUT"
COMMON="--base-url $URL --dataset random --input-len 128 --output-len 64 --num-requests 32 --no-progress --no-plots --warmup 0"
leanserve bench $COMMON --concurrency 8 --num-requests 8 --seed 999 --out "$OUT/warm" > /dev/null   # warm-up only
ours() { leanserve bench $COMMON --concurrency $CONC --seed $((100 + $1)) --out "$OUT/ours$1" > "$OUT/ours$1.txt" 2>&1; }
theirs() {
  python -m benchmarks.vllm_cli bench serve --backend openai --base-url "$URL" --endpoint /v1/completions \
    --model "$MODEL" --tokenizer "$MODEL_DIR" --dataset-name random --random-input-len 128 --random-output-len 64 \
    --seed $((200 + $1)) --num-prompts 32 --max-concurrency $CONC --ignore-eos --temperature 0 --num-warmups 0 \
    --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 --disable-tqdm \
    --save-result --result-dir "$OUT" --result-filename "vllm$1.json" > "$OUT/vllm$1.txt" 2>&1
}
for r in $(seq 0 $((ROUNDS - 1))); do
  if [ "$MODE" = together ]; then
    # vLLM's client spends ~10 s loading before its first request: start ours when it is about to send.
    theirs $r & pid=$!
    while ! grep -q "Starting main benchmark run" "$OUT/vllm$r.txt" 2>/dev/null; do sleep 0.2; done
    ours $r; wait $pid
  elif [ $((r % 2)) = 0 ]; then ours $r; sleep 3; theirs $r; else theirs $r; sleep 3; ours $r; fi
  sleep 3
done
python - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(rounds):
    ours = json.load(open(f"{out}/ours{r}/report.json"))["levels"][0]["runs"]
    ours = next(iter(ours.values()))
    vllm = json.load(open(f"{out}/vllm{r}.json"))
    rows.append({"ours_out_tok_s": ours["output_throughput"], "vllm_out_tok_s": vllm["output_throughput"],
                 "ours_req_s": ours["request_throughput"], "vllm_req_s": vllm["request_throughput"],
                 "ours_ttft_p50": ours["ttft_ms"]["p50"], "vllm_ttft_p50": vllm["median_ttft_ms"],
                 "ours_tpot_p50": ours["tpot_ms"]["p50"], "vllm_tpot_p50": vllm["median_tpot_ms"],
                 "ours_itl_p50": ours["itl_ms"]["p50"], "vllm_itl_p50": vllm["median_itl_ms"]})
    print(json.dumps({k: round(v, 2) for k, v in rows[-1].items()}))
median = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
print("median", json.dumps({k: round(v, 2) for k, v in median.items()}))
for key in ("out_tok_s", "req_s", "ttft_p50", "tpot_p50", "itl_p50"):
    print(f"{key}: leanserve bench / vllm bench = {median['ours_' + key] / median['vllm_' + key]:.3f}")
PY
