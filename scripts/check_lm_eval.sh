#!/usr/bin/env bash
# lm-evaluation-harness against `skymoe serve`: a loglikelihood task through lm_eval's
# local-completions model (the completions API with echo + logprobs, as it scores any
# multiple-choice or perplexity task), then the log-probabilities checked against
# `skymoe eval --per-token` on the same token ids: per token (the server's) and per sample (the
# loglikelihood lm_eval computed from them).
#
#   scripts/check_lm_eval.sh MODEL_DIR [TOKENIZER]
#
# For example, after `build/skymoe quickstart --small --out runs/qs`:
#   scripts/check_lm_eval.sh runs/qs/upcycled/step-00000150 runs/qs/tokenizer.model
#
# lm_eval and the Hugging Face tokenizer it needs (to count context tokens on its side) go into a
# venv, $VENV, never into the engine. Environment: SKYMOE (default build/skymoe), VENV (default
# /tmp/skymoe-lm-eval), TEXT (where the documents come from: default Debian's fortunes), N (40).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/check_lm_eval.sh MODEL_DIR [TOKENIZER]}
tokenizer=${2:-$model/tokenizer.model}
SKYMOE=${SKYMOE:-build/skymoe}
VENV=${VENV:-/tmp/skymoe-lm-eval}
TEXT=${TEXT:-/usr/share/games/fortunes/fortunes}
N=${N:-40}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/lm_eval" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "lm_eval[api]==0.4.13" transformers==5.24.0 \
    sentencepiece==0.2.3 protobuf==7.36.2
fi
py="$VENV/bin/python3"

# lm_eval counts the context's tokens itself: the same SentencePiece model as a Llama tokenizer
# (no bos, like lm_eval's default add_bos_token=False).
mkdir "$work/hf" "$work/task"
cp "$tokenizer" "$work/hf/tokenizer.model"
cat > "$work/hf/tokenizer_config.json" <<'EOF'
{"tokenizer_class": "LlamaTokenizer", "add_bos_token": false, "add_eos_token": false, "legacy": true,
 "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
EOF

# The task: lines of text, the first half the context, the rest the continuation to score (the
# shape of lambada's loglikelihood task, on local data).
"$py" scripts/check_lm_eval.py data "$TEXT" "$N" "$work/hf" "$work/task/docs.jsonl"
cat > "$work/task/skymoe_lines.yaml" <<EOF
task: skymoe_lines
dataset_path: json
dataset_kwargs:
  data_files:
    test: $work/task/docs.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
EOF

"$SKYMOE" serve --model "$model" --tokenizer "$tokenizer" --port 0 --threads 2 --quiet > "$work/serve.out" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$url" ] || { echo "check_lm_eval: skymoe serve did not start" >&2; exit 1; }
read -r name context < <("$py" -c 'import json, sys, urllib.request
m = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/models"))["data"][0]
print(m["id"], m["context_length"])' "$url")

# The lm_eval line docs/serving.md shows. max_length: the server's context (lm_eval keeps one
# position for the token it asks for). batch_size=1: the server takes one prompt per request.
HF_DATASETS_OFFLINE=1 "$VENV/bin/lm_eval" --model local-completions \
  --model_args "model=$name,base_url=$url/v1/completions,tokenizer=$work/hf,tokenizer_backend=huggingface,use_fast_tokenizer=False,max_length=$context" \
  --batch_size 1 \
  --tasks skymoe_lines --include_path "$work/task" --log_samples --output_path "$work/out"

"$py" scripts/check_lm_eval.py compare "$work/out/**/samples_skymoe_lines_*.jsonl" "$work/hf" "$url" "$SKYMOE" "$model" \
  "$work"
