"""Function calling on `mm deploy` with a tiny random Qwen3: `tools` are rendered by the checkpoint's own chat
template, tool_choice required / named force a well-formed call with a grammar, the call is parsed by the
template's tool parser (Hermes `<tool_call>` for Qwen) in whole responses and streams, tool turns in history,
tool_choice none; the Llama 3 JSON and GLM formats parse and their grammars accept their own calls."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from test_deploy_support import running_server

MODEL = "qwen3"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("tiny") / "qwen3")


@pytest.fixture(scope="module")
def server(qwen3_dir):
    with running_server(model=str(qwen3_dir), max_batch_size=8) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir):
    return AutoTokenizer.from_pretrained(qwen3_dir)


def prompt_tokens(client, **extra) -> int:
    return client.chat.completions.create(model=MODEL, max_tokens=1, temperature=0, **extra).usage.prompt_tokens


def test_tools_reach_the_prompt_as_the_checkpoint_template_renders_them(client, tokenizer):
    def official(messages, tools=None) -> int:
        return len(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])

    without, with_tools = prompt_tokens(client, messages=ASK), prompt_tokens(client, messages=ASK, tools=[WEATHER])
    assert without == official(ASK)
    assert with_tools == official(ASK, [WEATHER]) and with_tools - without > 50  # the whole tools block
    assert prompt_tokens(client, messages=ASK, tools=[WEATHER, TIME]) == official(ASK, [WEATHER, TIME])


def check_weather_call(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return arguments


def test_tool_choice_required_forces_a_parsed_call(client):
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                              max_tokens=80, temperature=1.0, seed=7, n=2)
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        check_weather_call(choice.message.tool_calls[0])


def test_named_tool_choice_calls_that_function(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
                                              max_tokens=60, temperature=1.0, seed=1)
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("utc", "cet")


def test_streamed_tool_calls_come_as_tool_calls_deltas(client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            max_tokens=80, temperature=1.0, seed=9, stream=True)
    chunks = [chunk for chunk in stream if chunk.choices]
    deltas = [chunk.choices[0].delta.tool_calls for chunk in chunks if chunk.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0][0].index == 0
    check_weather_call(deltas[0][0])
    assert not any("<tool_call>" in (chunk.choices[0].delta.content or "") for chunk in chunks)  # held back
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_round_trip_in_history_renders_with_the_template(client, tokenizer):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=80, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    official_history = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": call.function.name, "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "content": "sunny, 21 C"},
    ]
    expected = len(tokenizer.apply_chat_template(official_history, tools=[WEATHER], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"])
    second = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=4,
                                            temperature=0)
    assert second.usage.prompt_tokens == expected
    assert second.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_none_leaves_tool_markup_as_text(client, tokenizer):
    marker = tokenizer.convert_tokens_to_ids("<tool_call>")
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none",
                                              max_tokens=3, temperature=0, logit_bias={str(marker): 100})
    message = response.choices[0].message
    assert message.tool_calls is None and message.content.startswith("<tool_call>")


def test_auto_streams_held_back_markup_as_content_when_no_call_parses(client, tokenizer):
    # logit_bias makes the model open a call it never completes: the text held back in the stream (from the
    # marker on) must still arrive, as content, and match the whole response.
    marker = tokenizer.convert_tokens_to_ids("<tool_call>")
    request = dict(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=5, temperature=0,
                   logit_bias={str(marker): 100}, logprobs=True)
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.message.tool_calls is None and whole.message.content.startswith("<tool_call>")
    chunks = [chunk for chunk in client.chat.completions.create(stream=True, **request) if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "length"
    streamed = [e.token for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in whole.logprobs.content]


@pytest.mark.parametrize("body, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"tools": {"a": 1}}, "tools"),
    ({"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
])
def test_bad_tool_requests_are_400s_naming_the_field(server, body, param):
    response = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "messages": ASK,
                                                                       "max_tokens": 2, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# ---- the formats of other families ---------------------------------------------------------------------
def test_hermes_llama3_and_glm_outputs_parse():
    from swiftlite.tool_calls import get_parser

    hermes = get_parser("hermes").parse('Let me look.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
                                        '</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    assert hermes[0] == "Let me look." and [(c.name, json.loads(c.arguments)) for c in hermes[1]] == [
        ("f", {"a": 1}), ("g", {})]
    llama = get_parser("llama3_json").parse('<|python_tag|>{"name": "f", "parameters": {"a": "x"}}; '
                                            '{"name": "g", "parameters": {}}')
    assert llama[0] is None and [(c.name, json.loads(c.arguments)) for c in llama[1]] == [("f", {"a": "x"}),
                                                                                           ("g", {})]
    glm = get_parser("glm4").parse("<tool_call>f\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
                                   "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>")
    assert [(c.name, json.loads(c.arguments)) for c in glm[1]] == [("f", {"city": "Paris", "days": 3})]
    assert get_parser("hermes").parse("no call here") == ("no call here", [])
    assert get_parser("llama3_json").parse("{not a call") == ("{not a call", [])


@pytest.mark.parametrize("parser_name, good, bad", [
    ("hermes", '<tool_call>\n{"name":"get_time","arguments":{"zone":"utc"}}\n</tool_call>',
     '<tool_call>\n{"name":"get_tim","arguments":{"zone":"utc"}}\n</tool_call>'),
    ("llama3_json", '{"name":"get_time","parameters":{"zone":"cet"}}', '{"name":"get_time","parameters":{"zone":1}}'),
    ("glm4", '<tool_call>get_time\n<arg_key>zone</arg_key>\n<arg_value>"utc"</arg_value>\n</tool_call>',
     '<tool_call>get_time\n<arg_key>city</arg_key>\n<arg_value>"utc"</arg_value>\n</tool_call>'),
])
def test_forced_call_grammars_accept_their_format_only(tokenizer, parser_name, good, bad):
    import llguidance

    from swiftlite.engine.logits import grammar_tokenizer
    from swiftlite.tool_calls import get_parser

    grammar = get_parser(parser_name).forced_grammar([TIME], tokenizer)
    lltokenizer = grammar_tokenizer(tokenizer)

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(lltokenizer, grammar, log_level=0)
        ids = tokenizer.encode(text, add_special_tokens=False)
        return matcher.consume_tokens(ids) and matcher.is_accepting() and not matcher.is_error()

    assert accepts(good) and not accepts(bad)
    assert get_parser(parser_name).parse(good)[1][0].name == "get_time"


# ---- training on ms-swift's agent rows ------------------------------------------------------------------
AGENT_ROW = {
    "tools": json.dumps([{"name": "get_weather", "description": "the weather in a city",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]),
    "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"role": "tool_response", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny."},
    ],
}


def test_agent_rows_train_on_the_calls_and_replies_not_the_tool_answers(tokenizer):
    from swiftlite.data import record_to_conversation
    from swiftlite.templates import IGNORE_INDEX, get_template

    conversation = record_to_conversation(AGENT_ROW)
    template = get_template("qwen3", tokenizer)
    row = template.encode(conversation)
    official = tokenizer.apply_chat_template(
        [{"role": "user", "content": "weather in Paris?"},
         {"role": "assistant", "content": "Let me check.",
          "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": "sunny, 21 C"}, {"role": "assistant", "content": "It is sunny."}],
        tools=[{"type": "function", "function": json.loads(AGENT_ROW["tools"])[0]}], tokenize=False)
    assert row["input_ids"] == tokenizer.encode(official, add_special_tokens=False)  # tools block rendered
    labelled = [token for token, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert "Let me check." in text and '"name": "get_weather"' in text and "It is sunny." in text
    assert "sunny, 21 C" not in text and "weather in Paris" not in text and "# Tools" not in text


@pytest.mark.parametrize("change, words", [
    ({"tools": "[not json"}, "'tools' column"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool_call", "content": "get_weather(Paris)"},
                   {"role": "assistant", "content": "b"}]}, "turn 1 (tool_call)"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool_response", "content": "x"},
                   {"role": "assistant", "content": "b"}]}, "must follow the assistant's tool call"),
])
def test_bad_agent_rows_say_which_turn(change, words):
    from swiftlite.data import RowError, record_to_conversation

    with pytest.raises(RowError, match=words.replace("(", r"\(").replace(")", r"\)")):
        record_to_conversation({**AGENT_ROW, **change})
