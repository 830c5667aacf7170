"""Request bodies, validated at the edge: a bad field is a 422 naming it, never a 5xx.

Unknown keys are accepted and ignored, as newer SDKs may send fields we do not use. Every body
is checked first for what JSON allows but nothing downstream can store, encode or publish:
strings with lone surrogates (not UTF-8) and nesting deeper than MAX_JSON_DEPTH.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from webservice.limits import MAX_JSON_DEPTH


def canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"{value!r} is not a UUID") from e


def _check_text(value: str) -> None:
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text at offset {e.start} is not valid Unicode (a lone surrogate)"
            ) from None


def check_json(value: Any, depth: int = 0) -> None:
    """Raise ValueError for nesting deeper than MAX_JSON_DEPTH or a string that is not UTF-8."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key))
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_json(data)
        return data


class FunctionIn(_Body):
    function_name: str = Field(min_length=1)
    function_code: str = Field(min_length=1)
    #: False for `register_source_code`: `function_code` is then plain source text.
    serialized: bool = True
    meta: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    public: bool = False
    group: str | None = None
    ha_endpoint_id: str | None = None


class EndpointIn(_Body):
    endpoint_name: str | None = None
    display_name: str | None = None
    multi_user: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    allowed_functions: list[str] | None = None
    authentication_policy: str | None = None
    subscription_uuid: str | None = None
    public: bool = False
    high_assurance: bool = False
    admins: list[str] | None = None

    @field_validator("allowed_functions")
    @classmethod
    def _uuids(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [canonical_uuid(v) for v in value]


class SubmitIn(_Body):
    tasks: dict[str, list[str]]
    task_group_id: str | None = None
    create_queue: bool = False
    resource_specification: dict[str, Any] | None = None
    user_endpoint_config: dict[str, Any] | None = None
    user_runtime: dict[str, Any] | None = None
    result_serializers: list[str] | None = None

    @field_validator("tasks")
    @classmethod
    def _function_ids(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        # Keys stay as sent: the SDK matches the response's keys to its own strings.
        for key in value:
            canonical_uuid(key)
        return value

    @field_validator("task_group_id")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        return None if value is None else canonical_uuid(value)


class BatchStatusIn(_Body):
    task_ids: list[str]
