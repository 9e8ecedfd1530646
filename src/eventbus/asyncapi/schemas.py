"""Event models as JSON Schema under ``#/components/schemas``.

Every model is generated in one pass (pydantic's ``models_json_schema``), so the schemas of
nested models, enums and the like are shared definitions, referenced as
``#/components/schemas/{name}``, and names stay apart: a model keeps its class name while it is
the only one of that name, and two ``Created`` classes of different modules become
``shop__orders__Created`` and ``shop__refunds__Created``. The schema is the serialization
schema, what a publisher writes on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticUserError
from pydantic.json_schema import models_json_schema

from eventbus.errors import ConfigurationError

__all__ = ["REF_PREFIX", "component_schemas"]

REF_PREFIX = "#/components/schemas/"
M = TypeVar("M", bound=BaseModel)


def component_schemas(
    models: Sequence[type[M]],
) -> tuple[dict[type[M], str], dict[str, Any]]:
    """The component name of each model, and every schema they need, by component name."""
    unique = list(dict.fromkeys(models))
    if not unique:
        return {}, {}
    try:
        refs, top = models_json_schema(
            [(model, "serialization") for model in unique], ref_template=REF_PREFIX + "{model}"
        )
    except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
        raise ConfigurationError(_explain(unique, exc)) from exc
    names = {
        model: refs[(model, "serialization")]["$ref"].removeprefix(REF_PREFIX) for model in unique
    }
    return names, dict(top.get("$defs", {}))


def _explain(models: Sequence[type[M]], exc: Exception) -> str:
    culprit = "one of " + ", ".join(f"{m.__module__}.{m.__qualname__}" for m in models)
    for model in models:
        try:
            model.model_json_schema(mode="serialization")
        except (PydanticInvalidForJsonSchema, PydanticUserError):
            culprit = f"{model.__module__}.{model.__qualname__}"
            break
    return (
        f"cannot describe {culprit} as JSON Schema ({exc}); give the offending field a schema "
        "with typing.Annotated[..., pydantic.WithJsonSchema({...})]"
    )
