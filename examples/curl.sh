#!/usr/bin/env bash
# Call `mm deploy` with curl: the request bodies of ms-swift's deployment docs, adapted to `mm`.
#
#   mm deploy --model_type qwen2-vl-2b-instruct          # in another terminal
#   bash examples/curl.sh
#
# Environment: MM_BASE_URL (default http://127.0.0.1:8000/v1), MM_API_KEY (the server's --api_key, if any),
# MM_MODEL (default: the model the server serves first), MM_IMAGE (an image URL, or a local file, sent as base64).
set -euo pipefail

BASE_URL="${MM_BASE_URL:-http://127.0.0.1:8000/v1}"
IMAGE="${MM_IMAGE:-https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/rose.jpg}"
AUTH=()
if [[ -n "${MM_API_KEY:-}" ]]; then AUTH=(-H "Authorization: Bearer ${MM_API_KEY}"); fi
if [[ -f "$IMAGE" ]]; then IMAGE="data:image/png;base64,$(base64 -w0 "$IMAGE")"; fi
MODEL="${MM_MODEL:-$(curl -sf "${AUTH[@]}" "$BASE_URL/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')}"
post() {  # post PATH BODY: print the answer; fail on an HTTP error. The body goes on stdin: base64 images
          # can be longer than one command-line argument may be.
    echo "--- POST $1" >&2
    curl -sS --fail-with-body "${AUTH[@]}" "$BASE_URL$1" -H "Content-Type: application/json" --data-binary @- <<<"$2"
    echo
}

echo "--- GET /models" >&2
curl -sS --fail-with-body "${AUTH[@]}" "$BASE_URL/models"
echo

# qwen-vl-chat: the image inside the text
post /chat/completions '{
"model": "'"$MODEL"'",
"messages": [{"role": "user", "content": "Picture 1:<img>'"$IMAGE"'</img>\nWhat kind of flower is in the picture and how many are there?"}],
"max_tokens": 256,
"temperature": 0
}'

# yi-vl / minicpm-v: an images list beside the messages
post /chat/completions '{
"model": "'"$MODEL"'",
"messages": [{"role": "user", "content": "Describe this image."}],
"seed": 42,
"images": ["'"$IMAGE"'"]
}'

# OpenAI content parts, multi-turn (grps / rtp-llm)
post /chat/completions '{
"model": "'"$MODEL"'",
"messages": [
  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "'"$IMAGE"'"}}, {"type": "text", "text": "这是什么"}]},
  {"role": "assistant", "content": "图中是一朵花。"},
  {"role": "user", "content": "输出花的检测框。"}
],
"max_tokens": 256
}'

# streaming, with a usage chunk at the end
echo "--- POST /chat/completions (stream)" >&2
curl -sS -N --fail-with-body "${AUTH[@]}" "$BASE_URL/chat/completions" -H "Content-Type: application/json" \
     --data-binary @- <<<'{
"model": "'"$MODEL"'",
"messages": [{"role": "user", "content": "Describe this image.<img>'"$IMAGE"'</img>"}],
"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 32
}'

# qwen-vl (a base model): a raw completion; works on chat models too
post /completions '{
"model": "'"$MODEL"'",
"prompt": "Picture 1:<img>'"$IMAGE"'</img>\nThis is a",
"max_tokens": 32,
"temperature": 0
}'
