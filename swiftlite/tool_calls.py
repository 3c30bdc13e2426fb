"""Tool calls in a model's output, by the format its family was trained on (TemplateMeta.tool_parser).

Each parser knows two things about its format: how to read the calls out of a finished reply (`parse`), and a
grammar that forces one call (`forced_grammar`, for tool_choice "required" or a named function): with it even a
random-weight model emits a well-formed call of the right function with schema-valid arguments.

- "hermes": Qwen2.5 / Qwen3 / Qwen-VL and Hermes: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
- "llama3_json": Llama 3.1-3.3 (and Mllama): the reply is ``{"name": ..., "parameters": {...}}`` (optionally after
  ``<|python_tag|>``), several separated by ``;``.
- "glm4": GLM-4.5 / GLM-4.1V: ``<tool_call>name\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n</tool_call>``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_openai(self, index: int | None = None) -> dict:
        call = {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def _call_schema(tool: dict, arguments_key: str) -> dict:
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
            "required": ["name", arguments_key], "additionalProperties": False}


def _json_call(text: str, arguments_key: str) -> ToolCall | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(arguments_key, value.get("arguments", value.get("parameters", {})))
    return ToolCall(value["name"], arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                                         ensure_ascii=False))


class HermesParser:
    start = "<tool_call>"
    end = "</tool_call>"
    arguments_key = "arguments"

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(the content before the first call or None, the calls). No well-formed call: (text, [])."""
        if self.start not in text:
            return text, []
        calls = []
        for body in re.findall(re.escape(self.start) + r"(.*?)(?:" + re.escape(self.end) + r"|$)", text, re.S):
            call = _json_call(body.strip(), self.arguments_key)
            if call is not None:
                calls.append(call)
        if not calls:
            return text, []
        content = text[: text.index(self.start)].strip()
        return content or None, calls

    def may_start_call(self, text: str) -> int | None:
        """Where a call starts (or might, at the text's end) in streamed text: text after it is held back."""
        position = text.find(self.start)
        if position >= 0:
            return position
        for size in range(min(len(self.start) - 1, len(text)), 0, -1):
            if text.endswith(self.start[:size]):
                return len(text) - size
        return None

    def forced_grammar(self, tools: list[dict], tokenizer) -> str:
        from swiftlite.engine.logits import lark_grammar

        schema = _any_of([_call_schema(tool, self.arguments_key) for tool in tools])
        start, end = (_token_or_text(tokenizer, marker) for marker in (self.start, self.end))
        return lark_grammar(f'start: {start} "\\n" call "\\n" {end}\ncall: %json {json.dumps(schema)}')


class Llama3JsonParser(HermesParser):
    start = "{"
    arguments_key = "parameters"

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip()
        if body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>"):].strip()
        if not body.startswith("{"):
            return text, []
        calls = [_json_call(part.strip(), self.arguments_key) for part in body.split(";")]
        if not calls or any(call is None for call in calls):
            return text, []
        return None, calls

    def may_start_call(self, text: str) -> int | None:
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped.startswith(("{", "<|python_tag|>")) or not stripped else None

    def forced_grammar(self, tools: list[dict], tokenizer) -> str:
        from swiftlite.engine.logits import json_schema_grammar

        return json_schema_grammar(_any_of([_call_schema(tool, self.arguments_key) for tool in tools]))


class Glm4Parser(HermesParser):
    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        if self.start not in text:
            return text, []
        calls = []
        for body in re.findall(re.escape(self.start) + r"(.*?)(?:" + re.escape(self.end) + r"|$)", text, re.S):
            name, _, rest = body.strip().partition("\n")
            if not name.strip():
                continue
            arguments = {}
            for key, value in re.findall(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", rest, re.S):
                try:
                    arguments[key.strip()] = json.loads(value)
                except ValueError:
                    arguments[key.strip()] = value
            calls.append(ToolCall(name.strip(), json.dumps(arguments, ensure_ascii=False)))
        if not calls:
            return text, []
        content = text[: text.index(self.start)].strip()
        return content or None, calls

    def forced_grammar(self, tools: list[dict], tokenizer) -> str:
        from swiftlite.engine.logits import lark_grammar

        # Argument values as JSON values; keys among the function's parameters.
        alternatives = []
        for number, tool in enumerate(tools):
            function = tool["function"]
            keys = list((function.get("parameters") or {}).get("properties", {})) or ["arg"]
            key_rule = " | ".join(json.dumps(key) for key in keys)
            alternatives.append(f'call{number}: {json.dumps(function["name"])} ("\\n<arg_key>" ({key_rule}) '
                                f'"</arg_key>\\n<arg_value>" value "</arg_value>")*')
        start, end = (_token_or_text(tokenizer, marker) for marker in (self.start, self.end))
        calls = " | ".join(f"call{number}" for number in range(len(tools)))
        return lark_grammar(f'start: {start} ({calls}) "\\n" {end}\n' + "\n".join(alternatives)
                            + '\nvalue: %json {"type": ["string", "number", "boolean", "null"], '
                            '"x-guidance": {"whitespace_flexible": false}}')


def _any_of(schemas: list[dict]) -> dict:
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    # Compact JSON: without it a random (or unsure) model may fill its budget with whitespace inside the call.
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def _token_or_text(tokenizer, marker: str) -> str:
    """A Lark item for `marker`: its special token where the tokenizer has one (as the model emits), else text."""
    ids = tokenizer.convert_tokens_to_ids([marker]) if tokenizer is not None else [None]
    if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id and marker in tokenizer.get_vocab():
        return marker
    return json.dumps(marker)


PARSERS = {"hermes": HermesParser, "llama3_json": Llama3JsonParser, "glm4": Glm4Parser}


def get_parser(name: str | None):
    return PARSERS[name]() if name else None
