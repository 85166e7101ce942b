"""RequestModel: the base of every request body and of the objects inside one."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class RequestModel(BaseModel):
    """Base of every request body: accepts unknown fields and maps ``null`` to defaults where asked."""

    # Strict types, as OpenAI checks them: a bool or "0.5" is not a number.
    model_config = ConfigDict(extra="allow", strict=True)

    # Fields whose explicit null means "use the default" (the OpenAI spec marks them nullable).
    null_means_default: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls_for_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.null_means_default:
            return {k: v for k, v in data.items() if not (v is None and k in cls.null_means_default)}
        return data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Advertise that null is accepted for these fields, as the OpenAI spec does.
        json_schema = handler.resolve_ref_schema(handler(core_schema))
        properties = json_schema.get("properties", {})
        for name in cls.null_means_default:
            prop = properties.get(name)
            if prop is not None and "type" in prop:
                properties[name] = {**prop, "type": [prop["type"], "null"]}
        return json_schema

    def unknown_fields(self) -> list[str]:
        """Names of fields sent by the client that this server does not know (sorted, for logging)."""
        return sorted(self.model_extra or {})
