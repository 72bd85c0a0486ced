"""Compacted tool schemas keep everything a caller needs and validate exactly the same arguments."""

from __future__ import annotations

from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from corecraft.episode.compact import compact_description, compact_schema


class SearchArgs(BaseModel):
    customer_id: str | None = Field(default=None, description="Customer id, e.g. 'CUST-1'.", max_length=64)
    status: Literal["open", "closed"] | None = None
    page: int = Field(default=1, ge=1, le=100, description="Result page.")
    query: str = Field(description="Free text.", min_length=1)


SCHEMA = SearchArgs.model_json_schema()


def test_optional_fields_collapse_to_their_inner_type_and_keep_descriptions():
    small = compact_schema(SCHEMA)
    props = small["properties"]
    assert props["customer_id"] == {"description": "Customer id, e.g. 'CUST-1'.", "maxLength": 64, "type": "string"}
    assert props["status"] == {"enum": ["open", "closed"], "type": "string"}
    assert small["required"] == ["query"]
    assert "title" not in small and all("title" not in p for p in props.values())


def test_compaction_does_not_modify_its_input():
    before = repr(SCHEMA)
    compact_schema(SCHEMA, keep_bounds=False)
    assert repr(SCHEMA) == before


def test_dropping_bounds_removes_only_length_and_range_limits():
    small = compact_schema(SCHEMA, keep_bounds=False)
    assert small["properties"]["page"] == {"default": 1, "description": "Result page.", "type": "integer"}
    assert small["properties"]["query"] == {"description": "Free text.", "type": "string"}


@pytest.mark.parametrize(
    "args",
    [{"query": "gpu"}, {"query": "x", "status": "open", "page": 3}, {"query": "y", "customer_id": "CUST-9"}],
)
def test_valid_arguments_stay_valid(args):
    jsonschema.validate(args, SCHEMA)
    jsonschema.validate(args, compact_schema(SCHEMA))
    jsonschema.validate(args, compact_schema(SCHEMA, keep_bounds=False))


@pytest.mark.parametrize("args", [{}, {"query": "x", "status": "pending"}, {"query": "x", "page": "two"}])
def test_arguments_of_the_wrong_shape_stay_invalid(args):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(args, compact_schema(SCHEMA))


def test_description_keeps_the_first_paragraph_and_cuts_at_a_sentence():
    text = "Search orders. Newest first.\n\nReturns at most 10 results."
    assert compact_description(text) == "Search orders. Newest first."
    long = "First sentence here. " + "word " * 100
    assert compact_description(long, max_chars=40) == "First sentence here."
