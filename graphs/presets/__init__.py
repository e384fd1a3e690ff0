"""Builtin presets: a name -> a builder and its default options, overridable with `--set key=value`."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path

from .. import builders
from ..ir import Graph, SpecError, suggest
from ..spec import load_spec

PRESETS = {
    "mlp": builders.mlp,
    "transformer": builders.transformer,
    "gdn": builders.gdn,
    "gdn-heads": partial(builders.gdn, regime="heads", tied=False),
    "gdn-hybrid": partial(builders.gdn, attn_every=4),
}


def options(preset: str) -> dict:
    """The preset's options and their defaults."""
    fn = PRESETS[preset]
    sig = inspect.signature(fn.func if isinstance(fn, partial) else fn)
    defaults = {k: p.default for k, p in sig.parameters.items()}
    if isinstance(fn, partial):
        defaults.update(fn.keywords)
    return defaults


def _coerce(preset: str, key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SpecError(f"--set {key}={value}: expected true or false")
    if isinstance(default, int) or default is None and key.endswith("dim"):
        try:
            return int(value)
        except ValueError:
            raise SpecError(f"--set {key}={value}: expected an integer") from None
    return value


def load(spec: str, overrides: dict[str, str] | None = None) -> Graph:
    """A builtin preset name (with `overrides`) or a YAML spec path."""
    overrides = overrides or {}
    if spec in PRESETS:
        defaults = options(spec)
        kwargs = {}
        for key, value in overrides.items():
            if key not in defaults:
                raise SpecError(f"--set {key}: preset {spec!r} has no option {key!r}{suggest(key, defaults)}; "
                                f"options: {', '.join(defaults)}")
            kwargs[key] = _coerce(spec, key, value, defaults[key])
        return PRESETS[spec](**kwargs)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if overrides:
            raise SpecError("--set applies to builtin presets; edit the spec file instead", spec)
        return load_spec(path)
    raise SpecError(f"unknown spec {spec!r}{suggest(spec, PRESETS)}: use a preset ({', '.join(PRESETS)}) "
                    "or a YAML file")
