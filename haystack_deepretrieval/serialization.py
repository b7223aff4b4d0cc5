"""What every component of this package needs to load from pipeline YAML, and to refuse a clear-text secret there.

Haystack 3 imports only allowlisted modules when it loads a pipeline: importing this module registers
``haystack_deepretrieval`` with that allowlist, the supported way. Every module that defines a component, or loads a
pipeline that may name one, imports it.
"""

from __future__ import annotations

from typing import Any

from haystack.core.serialization import allow_deserialization_module

allow_deserialization_module("haystack_deepretrieval")


def refuse_clear_secrets(data: dict[str, Any], keys: list[str]) -> None:
    """Refuse a secret written in clear in serialized init parameters, masking it in ``data`` first.

    Haystack's pipeline loader repeats a failing component's whole data in its error message: the mask keeps the
    key out of that message (and out of any log of it). Only the environment-variable form may be serialized.
    """
    params = data.get("init_parameters") if isinstance(data, dict) else None
    for key in keys:
        value = params.get(key) if isinstance(params, dict) else None
        if value is None or (isinstance(value, dict) and value.get("type") == "env_var"):
            continue
        params[key] = "***"
        raise ValueError(f"init parameter {key!r} holds a secret in clear text (masked here); a pipeline file may "
                         f"only name environment variables: {key}: {{type: env_var, env_vars: [MY_API_KEY], "
                         "strict: false}, with the key itself in $MY_API_KEY")
