"""Build objects from plain ``{"_target_": "module.callable", **kwargs}`` specs.

The modules store such specs (plain dicts of plain values) as hyper-parameters, so that a
checkpoint alone rebuilds its flow and loads under torch's default ``weights_only=True``.
``weights_only`` stops pickled code, not a ``_target_`` string: a checkpoint is untrusted data,
so a spec may only name one of `BUILDERS`, called directly (nothing is imported by name, no
Hydra ``instantiate``, no nested targets).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distill import data, flows
from distill.flows.builders import unread_settings

#: The only callables a spec may name. A new builder is buildable from configs and
#: checkpoints once it is added here, under the dotted name its configs use.
BUILDERS: dict[str, Callable[..., Any]] = {
    "distill.flows.build_flow": flows.build_flow,
    "distill.flows.build_maf": flows.build_maf,
    "distill.flows.build_iaf": flows.build_iaf,
    "distill.flows.build_realnvp": flows.build_realnvp,
    "distill.flows.build_nice": flows.build_nice,
    "distill.flows.build_wavenet_maf": flows.build_wavenet_maf,
    "distill.flows.build_wavenet_iaf": flows.build_wavenet_iaf,
    "distill.flows.build_preprocessing": flows.build_preprocessing,
    "distill.data.build_datamodule": data.build_datamodule,
}


def plain(spec: Mapping[str, Any] | DictConfig | None) -> dict[str, Any] | None:
    """A resolved, plain-``dict`` copy of ``spec`` (DictConfigs and ListConfigs are converted)."""
    if spec is None:
        return None
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)
    return {key: _plain_value(value) for key, value in spec.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return plain(value) if isinstance(value, Mapping) else value


def _special_keys(value: Any, path: str) -> list[str]:
    """Dotted paths of the Hydra-style ``_name_`` keys anywhere in ``value``."""
    if isinstance(value, Mapping):
        found = [f"{path}.{k}" for k in value if isinstance(k, str) and _is_special(k)]
        return found + [p for k, v in value.items() for p in _special_keys(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _special_keys(v, f"{path}[{i}]")]
    return []


def _is_special(key: str) -> bool:
    return len(key) > 2 and key.startswith("_") and key.endswith("_")


def build_from_spec(spec: Mapping[str, Any] | DictConfig, key: str, **overrides: Any) -> Any:
    """``BUILDERS[spec["_target_"]](**spec, **overrides)``; a refused or failing spec becomes
    a one-line ValueError that names the config ``key`` and the reason."""
    spec = plain(spec)
    if "_target_" not in spec:
        raise ValueError(
            f"config `{key}` needs a `_target_` (the callable to build), got {dict(spec)}"
        )
    target = spec.pop("_target_")
    builder = BUILDERS.get(target) if isinstance(target, str) else None
    if builder is None:
        raise ValueError(
            f"config `{key}` names `_target_: {target}`, which distill does not build: "
            f"use one of {', '.join(BUILDERS)} (a checkpoint naming anything else is not "
            "distill's or was tampered with)"
        )
    if special := _special_keys(spec, key):
        raise ValueError(
            f"config `{key}` holds {', '.join(special)}: a spec is one `_target_` and plain "
            "keyword arguments (no nested `_target_`, `_partial_`, `_args_`, ...); remove them"
        )
    try:
        return builder(**spec, **overrides)
    except Exception as error:  # the builder's own error, as one line naming the key
        raise ValueError(f"invalid config `{key}` ({target}): {error}") from error


def without_unread(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` (hyper-parameters: nested mappings and lists) with every flow spec's unread
    settings removed (`distill.flows.builders.unread_settings`), and their dotted paths.

    For checkpoints written before the builders refused such settings: they were dropped when
    the flow was built then, so the flow rebuilt without them is the one that was trained."""
    if isinstance(value, Mapping):
        target = value.get("_target_")
        unread = unread_settings(target, value) if target in BUILDERS else []
        cleaned, dropped = {}, [f"{path}.{key}".lstrip(".") for key in unread]
        for key, item in value.items():
            if key not in unread:
                cleaned[key], inner = without_unread(item, f"{path}.{key}")
                dropped += inner
        return cleaned, dropped
    if isinstance(value, list | tuple):
        pairs = [without_unread(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return type(value)(item for item, _ in pairs), [p for _, inner in pairs for p in inner]
    return value, []
