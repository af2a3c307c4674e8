"""The study DSL: Pydantic models, YAML loading with line numbers, JSON Schema."""

from .loader import LoadedSpec, load_spec
from .models import Study


def json_schema() -> dict:
    """JSON Schema of the DSL, for editors (yaml-language-server) and `sbif schema`."""
    schema = Study.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sbif_dsl study spec"
    return schema


__all__ = ["LoadedSpec", "Study", "json_schema", "load_spec"]
