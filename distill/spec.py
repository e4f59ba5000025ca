"""Build objects from plain ``{"_target_": "module.callable", **kwargs}`` specs.

The modules store such specs (plain dicts of plain values) as hyper-parameters, so that a
checkpoint alone rebuilds its flow and loads under torch's default ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def plain(spec: Mapping[str, Any] | DictConfig | None) -> dict[str, Any] | None:
    """A resolved, plain-``dict`` copy of ``spec`` (DictConfigs are converted)."""
    if spec is None:
        return None
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)
    return {k: (plain(v) if isinstance(v, Mapping | DictConfig) else v) for k, v in spec.items()}


def build_from_spec(spec: Mapping[str, Any], key: str, **overrides: Any) -> Any:
    """``spec["_target_"](**spec, **overrides)``; a failure becomes a one-line ValueError
    that names the config ``key`` and the reason."""
    if "_target_" not in spec:
        raise ValueError(
            f"config `{key}` needs a `_target_` (the callable to build), got {dict(spec)}"
        )
    try:
        return instantiate(dict(spec), _convert_="all", **overrides)
    except Exception as error:  # hydra wraps the builder's own error: surface the cause
        cause = error.__cause__ or error
        raise ValueError(f"invalid config `{key}` ({spec['_target_']}): {cause}") from error
