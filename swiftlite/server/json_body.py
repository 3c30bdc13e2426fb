"""A request body as JSON, refusing with a 400 what would break later: deep nesting, huge integers, lone
surrogates."""

from __future__ import annotations

from swiftlite.server.errors import bad_request

MAX_JSON_DEPTH = 64  # no OpenAI request nests deeper than about 6


def parse_json_body(raw: bytes):
    """The body as JSON, refusing with a 400 what would break later: deep nesting, huge integers, lone surrogates."""
    import json

    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON: {error}", code="invalid_json") from None
    except RecursionError:
        raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                          code="invalid_json") from None
    except ValueError as error:  # Python's 4300-digit cap on integer literals
        raise bad_request(f"the request body is not acceptable JSON: {str(error)[:120]}", code="invalid_json") from None
    check_json_values(body)
    return body


def check_json_values(body) -> None:
    """Walk the parsed body (without recursion): bounded depth, and every string valid Unicode.

    JSON's \\ud800 escapes decode to lone UTF-16 surrogates, which no tokenizer or encoder takes; they are
    refused here with the field's path instead of failing in the model's thread.
    """
    stack = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                              param=path.lstrip(".") or None, code="invalid_json")
        if isinstance(value, str):
            if _has_surrogate(value):
                raise bad_request(f"{path.lstrip('.') or 'the body'} holds a lone UTF-16 surrogate (an unpaired "
                                  "\\ud800-\\udfff escape): send valid Unicode", param=path.lstrip(".") or None,
                                  code="invalid_unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_surrogate(key):
                    raise bad_request("a field name holds a lone UTF-16 surrogate", param=path.lstrip(".") or None,
                                      code="invalid_unicode")
                stack.append((item, f"{path}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
