"""response_format json_object / json_schema with grammar-constrained decoding (llguidance): even a random-weight
tiny Qwen3 returns JSON that validates against the schema, streamed or not, sampled or greedy; the openai SDK's
`.parse()` with a pydantic model works; bad schemas are 400s."""

from __future__ import annotations

import json

import jsonschema
import openai
import pydantic
import pytest

from test_deploy_support import running_server

MODEL = "qwen3"
SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "string", "enum": ["tea", "cake", "soup"]}, "minItems": 1,
                  "maxItems": 3},
        "paid": {"type": "boolean"},
        "total": {"type": "number", "minimum": 0, "maximum": 1000}},
        "required": ["items", "paid", "total"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "point": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 99},
                                                   "y": {"type": "integer", "maximum": 99}},
                  "required": ["x", "y"], "additionalProperties": False},
        "label": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[a-z]{1,5}$"}]}},
        "required": ["point", "label"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("tiny") / "qwen3")


@pytest.fixture(scope="module")
def client(qwen3_dir):
    with running_server(model=str(qwen3_dir), max_batch_size=8) as server:
        yield openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def test_unconstrained_random_model_output_is_not_json(client):
    # The baseline that makes the tests below mean something: without a grammar the random model writes noise.
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=30, temperature=1.0, seed=3)
    with pytest.raises(ValueError):
        json.loads(response.choices[0].message.content)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_validates_for_each_seed(client, name):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fill it in"}],
                                              max_tokens=120, temperature=1.0, seed=11, n=3,
                                              response_format=schema_format(name))
    for choice in response.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])
        assert choice.finish_reason == "stop"  # the grammar ends the value and then allows only end-of-turn


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_streamed_output_validates(client, name):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fill it in"}],
                                            max_tokens=120, temperature=0.8, seed=5, stream=True,
                                            response_format=schema_format(name))
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # really streamed in pieces
    jsonschema.validate(json.loads(text), SCHEMAS[name])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_mode_gives_a_json_object_on_the_completions_endpoint_too(client):
    # json_object bounds no string, and a random model can wander inside one past any max_tokens: sampled with a
    # seed whose answer ends, the grammar must have made that answer an object.
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "json please"}],
                                          max_tokens=120, temperature=1.0, seed=1,
                                          response_format={"type": "json_object"})
    assert chat.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(chat.choices[0].message.content), dict)
    completion = client.completions.create(model=MODEL, prompt="data:", max_tokens=80, temperature=1.0, seed=2,
                                           extra_body={"response_format": schema_format("person")})
    jsonschema.validate(json.loads(completion.choices[0].text), SCHEMAS["person"])


def test_sdk_parse_with_a_pydantic_model(client):
    class Pet(pydantic.BaseModel):
        kind: str = pydantic.Field(max_length=6)
        legs: int = pydantic.Field(ge=0, le=8)

    response = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "a pet"}],
                                             max_tokens=80, temperature=1.0, seed=4, response_format=Pet)
    pet = response.choices[0].message.parsed
    assert isinstance(pet, Pet) and 0 <= pet.legs <= 8


@pytest.mark.parametrize("response_format, param", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5,
                                                                     "maximum": 1}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "response_format.json_schema.schema"),
])
def test_bad_response_formats_are_400s_naming_the_field(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       response_format=response_format)
    assert caught.value.body["param"] == param


def test_a_grammar_row_leaves_the_other_rows_of_its_batch_alone(qwen3_dir):
    """The engine's per-row path (generate(), as both engines sample through RowSampler): in one batch, the
    constrained row gives schema-valid JSON while a plain greedy row gives what it gives alone; a grammar
    llguidance refuses fails its own row only."""
    from swiftlite.conversation import conversation_from_query
    from swiftlite.engine.generate import SamplingParams, generate
    from swiftlite.engine.logits import json_schema_grammar
    from swiftlite.models.checkpoint import load_for_inference

    loaded = load_for_inference(model_id_or_path=str(qwen3_dir), dtype="fp32")
    model, template = loaded.model, loaded.template
    row = template.encode(conversation_from_query("fill it in"))
    alone = generate(model, template, [row], [SamplingParams(max_new_tokens=10, temperature=0)])[0]
    constrained = SamplingParams(max_new_tokens=120, temperature=1.0, seed=3,
                                 grammar=json_schema_grammar(SCHEMAS["order"]))
    broken = SamplingParams(max_new_tokens=10, temperature=0, grammar="start: this is not lark ((")
    results = generate(model, template, [row, row, row],
                       [SamplingParams(max_new_tokens=10, temperature=0), constrained, broken], isolate_rows=True)
    assert results[0].token_ids == alone.token_ids
    jsonschema.validate(json.loads(results[1].text), SCHEMAS["order"])
    assert results[2].finish_reason == "error" and "grammar" in results[2].error
