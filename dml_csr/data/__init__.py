from .schemas import SCHEMAS, Schema, get_schema, schema_from_tokens
