"""response_format and tools: the fields checked at parse time, and the llguidance grammar that enforces them."""

from __future__ import annotations

from swiftlite.server.errors import bad_request
from swiftlite.server.fields import show_value
from swiftlite.server.protocol import ParsedRequest

TOOL_CHOICES = ("none", "auto", "required")


def response_format_fields(body: dict) -> tuple[bool, dict | None]:
    """(JSON wanted, its schema or None): OpenAI's text / json_object / json_schema response formats."""
    value = body.get("response_format")
    if value is None:
        return False, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("'response_format.json_schema' must be an object with a 'name' and a 'schema'",
                              param="response_format.json_schema")
        if schema is None:
            schema = {}  # OpenAI's schema is optional: any JSON value
        if not isinstance(schema, dict):
            raise bad_request("'response_format.json_schema.schema' must be a JSON schema object",
                              param="response_format.json_schema.schema")
        from swiftlite.engine.logits import GrammarError, check_grammar, json_schema_grammar

        try:
            check_grammar(json_schema_grammar(schema))
        except GrammarError as error:
            raise bad_request(f"'response_format.json_schema.schema': {error}",
                              param="response_format.json_schema.schema", code="invalid_schema") from None
        return True, schema
    raise bad_request(f"'response_format.type' {show_value(kind)} is not one of text, json_object, json_schema",
                      param="response_format.type")


def tool_fields(body: dict) -> tuple[list | None, object]:
    """The checked `tools` list and `tool_choice` ("none", "auto", "required" or the forced function's name)."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects",
                              param="tools")
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function,
                                                                                                         dict):
                raise bad_request(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                  param=f"tools[{index}]")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise bad_request(f"tools[{index}].function.name must be a non-empty string",
                                  param=f"tools[{index}].function.name")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise bad_request(f"tools[{index}].function.parameters must be a JSON schema object",
                                  param=f"tools[{index}].function.parameters")
        tools = tools or None
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise bad_request("'tool_choice' must be none, auto, required or {\"type\": \"function\", "
                              "\"function\": {\"name\": ...}}", param="tool_choice")
        if name not in [tool["function"]["name"] for tool in tools or []]:
            raise bad_request(f"'tool_choice' names the function {show_value(name)}, which is not in 'tools'",
                              param="tool_choice")
        return tools, name
    if choice not in TOOL_CHOICES:
        raise bad_request(f"'tool_choice' {show_value(choice)} is not one of none, auto, required or a named function",
                          param="tool_choice")
    if choice == "required" and not tools:
        raise bad_request("'tool_choice' is required but no 'tools' were given", param="tool_choice")
    return tools, choice


def message_tool_calls(calls, param: str) -> list[dict]:
    """An assistant message's `tool_calls` as chat templates take them (arguments as objects)."""
    import json

    if not isinstance(calls, list):
        raise bad_request(f"{param} must be a list", param=param)
    checked = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        where = f"{param}[{number}]"
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                              "\"arguments\"}}}}", param=where)
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                raise bad_request(f"{where}.function.arguments is not valid JSON",
                                  param=f"{where}.function.arguments") from None
        checked.append({"id": call.get("id"), "type": "function",
                        "function": {"name": function["name"], "arguments": arguments}})
    return checked


def constraint_grammar(parsed: ParsedRequest, template) -> str | None:
    """The llguidance grammar for response_format or a forced tool_choice, or None."""
    from swiftlite.engine.logits import GrammarError, check_grammar, json_schema_grammar

    if parsed.json_mode:
        return json_schema_grammar(parsed.json_schema)
    if parsed.tool_choice in ("none", "auto") or not parsed.tools:
        return None
    from swiftlite.tool_calls import get_parser

    parser = get_parser(template.meta.tool_parser)
    if parser is None:
        raise bad_request(f"template {template.meta.name!r} has no known tool-call format, so 'tool_choice' "
                          f"{show_value(parsed.tool_choice)} cannot be enforced: use auto or none", param="tool_choice",
                          code="unsupported")
    tools = parsed.tools if parsed.tool_choice == "required" else [
        tool for tool in parsed.tools if tool["function"]["name"] == parsed.tool_choice]
    try:
        grammar = parser.forced_grammar(tools, template.tokenizer)
        check_grammar(grammar)
    except GrammarError as error:
        raise bad_request(f"'tools': {error}", param="tools", code="invalid_schema") from None
    return grammar
