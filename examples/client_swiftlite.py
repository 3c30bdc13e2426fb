"""Call `mm deploy` with swiftlite's client (ms-swift's `inference_client` API), adapted from ms-swift's docs.

    mm deploy --model_type qwen2-vl-2b-instruct          # in another terminal
    python examples/client_swiftlite.py

Environment: MM_BASE_URL (default http://127.0.0.1:8000/v1), MM_API_KEY (default EMPTY), MM_MODEL (default:
the first model the server lists), MM_IMAGE and MM_IMAGE2 (image URLs or local paths: the client sends local
files as base64 by itself).
"""

import asyncio
import os

from swiftlite.client import XRequestConfig, get_model_list_client, inference_client, inference_client_async

ROSE = "https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/rose.jpg"
ANIMAL = "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png"
server = {"url": os.environ.get("MM_BASE_URL", "http://127.0.0.1:8000/v1"),
          "api_key": os.environ.get("MM_API_KEY", "EMPTY")}
image = os.environ.get("MM_IMAGE", ROSE)
image2 = os.environ.get("MM_IMAGE2", ANIMAL)

model_list = get_model_list_client(**server)
model_type = os.environ.get("MM_MODEL") or model_list.data[0].id
print(f"model_type: {model_type}")
is_chat = next((m.is_chat for m in model_list.data if m.id == model_type), True) is not False

if not is_chat:
    # A base model: inference_client sends a raw completion (resp.choices[0].text), as for seed 000's qwen-vl.
    query = f"Picture 1:<img>{image}</img>\nThis is a"
    resp = inference_client(model_type, query, request_config=XRequestConfig(seed=42, max_tokens=32), **server)
    print(f"response: {resp.choices[0].text}")
    print("response: ", end="")
    for chunk in inference_client(model_type, query, request_config=XRequestConfig(stream=True, seed=42, max_tokens=32),
                                  **server):
        print(chunk.choices[0].text, end="", flush=True)
    print()
    raise SystemExit(0)

# 1. <img> tags: a URL, a local path or base64 all work (qwen-vl-chat example)
query = f"Picture 1:<img>{image}</img>\nWhat kind of flower is in the picture and how many are there?"
resp = inference_client(model_type, query, request_config=XRequestConfig(seed=42), **server)
response = resp.choices[0].message.content
print(f"query: {query}")
print(f"response: {response}")

history = [(query, response)]
query = "Box out the flowers in the picture."
stream_resp = inference_client(model_type, query, history, request_config=XRequestConfig(stream=True, seed=42),
                               **server)
print(f"query: {query}")
print("response: ", end="")
for chunk in stream_resp:
    print(chunk.choices[0].delta.content, end="", flush=True)
print()

# 2. an images list (yi-vl / minicpm-v examples)
images = [image]
query = "Describe this image."
resp = inference_client(model_type, query, images=images, request_config=XRequestConfig(temperature=0), **server)
response = resp.choices[0].message.content
print(f"response: {response}")
history = [(query, response)]
images.append(image2)
stream_resp = inference_client(model_type, "How many sheep are in the picture?", history, images=images,
                               request_config=XRequestConfig(stream=True, temperature=0), **server)
print("response: ", end="")
for chunk in stream_resp:
    print(chunk.choices[0].delta.content, end="", flush=True)
print()


# 3. async
async def ask_async():
    resp = await inference_client_async(model_type, f"<img>{image}</img>What colour is it?",
                                        request_config=XRequestConfig(temperature=0), **server)
    print(f"async response: {resp.choices[0].message.content}")
    stream = await inference_client_async(model_type, f"<img>{image}</img>What shape is it?",
                                          request_config=XRequestConfig(temperature=0, stream=True), **server)
    print("async response: ", end="")
    async for chunk in stream:
        print(chunk.choices[0].delta.content, end="", flush=True)
    print()


asyncio.run(ask_async())
