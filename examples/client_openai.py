"""Call `mm deploy` with the official openai SDK: the calls of ms-swift's deployment docs, adapted to `mm`.

    mm deploy --model_type qwen2-vl-2b-instruct          # in another terminal
    python examples/client_openai.py

Environment: MM_BASE_URL (default http://127.0.0.1:8000/v1), MM_API_KEY (default EMPTY; the server's --api_key),
MM_MODEL (default: the first model the server lists), MM_IMAGE and MM_IMAGE2 (image URLs or local paths; local
files are sent as base64, so the server needs no access to them). For an audio model (qwen2-audio-7b-instruct)
set MM_AUDIO to a wav URL or file instead: the example then asks about the sound, as Xinference's docs do.
"""

import base64
import mimetypes
import os

from openai import OpenAI

ROSE = "https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/rose.jpg"
ANIMAL = "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png"


def image_source(value: str, as_data_url: bool) -> str:
    """A URL stays a URL; a local file becomes base64 (a data URL for image_url parts, bare inside <img> tags)."""
    if os.path.isfile(value):
        with open(value, "rb") as f:
            encoded = base64.b64encode(f.read()).decode("utf-8")
        mime = mimetypes.guess_type(value)[0] or "image/png"
        return f"data:{mime};base64,{encoded}" if as_data_url else encoded
    return value


client = OpenAI(api_key=os.environ.get("MM_API_KEY", "EMPTY"),
                base_url=os.environ.get("MM_BASE_URL", "http://127.0.0.1:8000/v1"))
image = os.environ.get("MM_IMAGE", ROSE)
image2 = os.environ.get("MM_IMAGE2", ANIMAL)
models = client.models.list().data
model_type = os.environ.get("MM_MODEL") or models[0].id
card = next((m for m in models if m.id == model_type), models[0])
print(f"model_type: {model_type}")

if os.environ.get("MM_AUDIO"):
    audio = os.environ["MM_AUDIO"]
    if os.path.isfile(audio):  # OpenAI's input_audio part carries the file itself
        with open(audio, "rb") as f:
            encoded = base64.b64encode(f.read()).decode()
        part = {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}
    else:  # Xinference's part for a URL
        part = {"type": "audio", "audio_url": audio}
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [part, {"type": "text", "text": "What's that sound?"}]}]
    resp = client.chat.completions.create(model=model_type, messages=messages)
    print(f"response: {resp.choices[0].message.content}")
    messages += [{"role": "assistant", "content": resp.choices[0].message.content},
                 {"role": "user", "content": [{"type": "text", "text": "What can you do when you hear that?"}]}]
    print("response: ", end="")
    for chunk in client.chat.completions.create(model=model_type, messages=messages, stream=True):
        print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    raise SystemExit(0)

if not (card.model_extra or {}).get("is_chat", True):
    # A base model (no chat template): raw completions, as seed 000's qwen-vl example.
    query = f"Picture 1:<img>{image_source(image, as_data_url=False)}</img>\nThis is a"
    resp = client.completions.create(model=model_type, prompt=query, seed=42)
    print(f"response: {resp.choices[0].text}")
    print("response: ", end="")
    for chunk in client.completions.create(model=model_type, prompt=query, stream=True, seed=42):
        print(chunk.choices[0].text, end="", flush=True)
    print()
    raise SystemExit(0)

# 1. Qwen-VL style: the image inside the text as <img>...</img> (qwen-vl-chat example)
query = (f"Picture 1:<img>{image_source(image, as_data_url=False)}</img>\n"
         "What kind of flower is in the picture and how many are there?")
messages = [{"role": "user", "content": query}]
resp = client.chat.completions.create(model=model_type, messages=messages, seed=42)
response = resp.choices[0].message.content
print(f"response: {response}")

# Streaming, second turn
messages.append({"role": "assistant", "content": response})
messages.append({"role": "user", "content": "Box out the flowers in the picture."})
print("response: ", end="")
for chunk in client.chat.completions.create(model=model_type, messages=messages, stream=True, seed=42):
    print(chunk.choices[0].delta.content, end="", flush=True)
print()

# 2. ms-swift's `images` field (yi-vl / minicpm-v examples): images for a conversation whose text names none
images = [image_source(image, as_data_url=True)]
messages = [{"role": "user", "content": "Describe this image."}]
resp = client.chat.completions.create(model=model_type, messages=messages, temperature=0,
                                      extra_body={"images": images})
print(f"response: {resp.choices[0].message.content}")
messages.append({"role": "assistant", "content": resp.choices[0].message.content})
messages.append({"role": "user", "content": "How many sheep are in the picture?"})
images.append(image_source(image2, as_data_url=True))
print("response: ", end="")
for chunk in client.chat.completions.create(model=model_type, messages=messages, stream=True, temperature=0,
                                            extra_body={"images": images}):
    print(chunk.choices[0].delta.content, end="", flush=True)
print()

# 3. OpenAI content parts (Xinference / rtp-llm / grps examples)
resp = client.chat.completions.create(model=model_type, messages=[{"role": "user", "content": [
    {"type": "text", "text": "What's in this image?"},
    {"type": "image_url", "image_url": {"url": image_source(image, as_data_url=True)}},
]}])
print(f"response: {resp.choices[0].message.content}")
print(f"usage: {resp.usage.prompt_tokens} prompt + {resp.usage.completion_tokens} completion tokens")
