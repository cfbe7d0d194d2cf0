"""The CRD and the pydantic spec models say the same thing: defaults, enums, limits, fields."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
import yaml
from matchops_operator.spec import (
    GROUP,
    KIND,
    OPERATOR_WORKER_ENV,
    PLURAL,
    VERSION,
    MatchIngestionSpec,
)
from matchops_worker.durations import DURATION_PATTERN
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

CRD_PATH = Path(__file__).parents[2] / "crds" / "matchops.dev_matchingestions.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _literal_values(annotation: Any) -> list[Any] | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None


def _pairs(
    model: type[BaseModel], node: dict[str, Any], path: str
) -> list[tuple[str, Any, dict[str, Any]]]:
    """(path, pydantic field, CRD property) for every field, recursively."""
    found = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = node["properties"].get(alias)
        assert prop is not None, f"{path}.{alias} is in the model but not in the CRD"
        found.append((f"{path}.{alias}", field, prop))
        nested = _model_of(field.annotation)
        if nested is not None:
            found.extend(_pairs(nested, prop, f"{path}.{alias}"))
    return found


def test_crd_names_the_resource(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == KIND
    assert names["shortNames"] == ["mi"]
    assert names["categories"] == ["matchops"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_health_at_a_glance(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Backlog", "DLQ", "Workers", "Last Scrape", "Age"]


def test_every_crd_spec_property_is_a_model_field(schema: dict[str, Any]) -> None:
    def walk(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
        aliases = {field.alias or name: field for name, field in model.model_fields.items()}
        assert set(node["properties"]) == set(aliases), path
        for alias, field in aliases.items():
            nested = _model_of(field.annotation)
            if nested is not None:
                walk(nested, node["properties"][alias], f"{path}.{alias}")

    walk(MatchIngestionSpec, schema["properties"]["spec"], "spec")


def test_defaults_agree(schema: dict[str, Any]) -> None:
    for path, field, prop in _pairs(MatchIngestionSpec, schema["properties"]["spec"], "spec"):
        if "default" not in prop:
            continue
        if field.default_factory is not None:
            model_default = field.default_factory()  # type: ignore[call-arg]
        else:
            model_default = field.default
        assert model_default is not PydanticUndefined, f"{path}: CRD default, model required"
        if isinstance(model_default, BaseModel):
            model_default = model_default.model_dump(by_alias=True)
            # A defaulted object in the CRD is {} and gets its fields' own defaults.
            assert prop["default"] == {}, path
            continue
        if isinstance(model_default, tuple):
            model_default = list(model_default)
        assert prop["default"] == model_default, path


def test_model_defaults_exist_in_crd(schema: dict[str, Any]) -> None:
    """A field with a static default in the model has the same default in the CRD."""
    for path, field, prop in _pairs(MatchIngestionSpec, schema["properties"]["spec"], "spec"):
        if field.is_required() or field.default is None:
            continue
        assert "default" in prop, f"{path} has a model default but no CRD default"


def test_enums_agree(schema: dict[str, Any]) -> None:
    seen = 0
    for path, field, prop in _pairs(MatchIngestionSpec, schema["properties"]["spec"], "spec"):
        values = _literal_values(field.annotation)
        if values is None:
            assert "enum" not in prop, path
            continue
        seen += 1
        assert prop["enum"] == values, path
    assert seen == 3  # queueType, deletionPolicy, logLevel


def test_limits_agree(schema: dict[str, Any]) -> None:
    checked = 0
    for path, field, prop in _pairs(MatchIngestionSpec, schema["properties"]["spec"], "spec"):
        model: dict[str, int] = {}
        for item in field.metadata:
            if isinstance(item, annotated_types.Ge):
                model["minimum"] = int(item.ge)  # type: ignore[call-overload]
            elif isinstance(item, annotated_types.Le):
                model["maximum"] = int(item.le)  # type: ignore[call-overload]
            elif isinstance(item, annotated_types.MinLen):
                model["minItems" if prop["type"] == "array" else "minLength"] = item.min_length
            elif isinstance(item, annotated_types.MaxLen):
                model["maxItems" if prop["type"] == "array" else "maxLength"] = item.max_length
        for key, value in model.items():
            checked += 1
            assert prop.get(key) == value, f"{path}: {key} {prop.get(key)} != {value}"
        if prop["type"] == "integer":
            assert "minimum" in model, f"{path}: integer without a minimum in the model"
    assert checked > 10


def test_durations_use_the_workers_pattern(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    delays = spec["broker"]["properties"]["retry"]["properties"]["delays"]["items"]
    assert delays["pattern"] == DURATION_PATTERN
    assert spec["workers"]["properties"]["batchWait"]["pattern"] == DURATION_PATTERN


def test_cron_pattern_accepts_schedules_and_refuses_garbage(schema: dict[str, Any]) -> None:
    pattern = schema["properties"]["spec"]["properties"]["scraper"]["properties"]["schedule"][
        "pattern"
    ]
    for good in ["0 6 * * *", "*/5 * * * *", "0 6 * * MON-FRI", "@daily", "30 2 1,15 * *"]:
        assert re.search(pattern, good), good
    for bad in ["every day", "0 6 * *", "@sometimes", "", "0 6 * * * *"]:
        assert not re.search(pattern, bad), bad


def test_every_spec_field_is_described(schema: dict[str, Any]) -> None:
    """`kubectl explain mi.spec...` teaches every field."""

    def walk(node: dict[str, Any], path: str) -> None:
        for name, prop in (node.get("properties") or {}).items():
            if path.endswith((".env", "resources")):
                continue
            assert prop.get("description"), f"{path}.{name} has no description"
            walk(prop, f"{path}.{name}")

    walk(schema["properties"]["spec"], "spec")


def test_workers_env_refuses_what_the_operator_sets(schema: dict[str, Any]) -> None:
    env = schema["properties"]["spec"]["properties"]["workers"]["properties"]["env"]
    (rule,) = env["items"]["properties"]["name"]["x-kubernetes-validations"]
    assert set(re.findall(r"'(MATCHOPS_[A-Z_]+)'", rule["rule"])) == OPERATOR_WORKER_ENV
    # A rule over a list needs a bound for the API server to accept its cost.
    assert env["maxItems"] <= 100
