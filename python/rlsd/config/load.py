"""Building a :class:`~rlsd.config.schema.Config`: from a mapping, a YAML file and ``--set`` overrides."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, Optional

import yaml

from rlsd_kernels.options import FIELDS as LOSS_OPTIONS
from rlsd_kernels.options import RLSDOptions

from .checks import ConfigError, _show, _suggest, _unwrap, environment_problems
from .schema import Config

# keys of earlier configs that have moved: their place now
MOVED = {f"algo.{name}": f"algo.loss.{name}" for name in LOSS_OPTIONS}


def _unknown(keys: list, names: list, where: str) -> str:
    """The message for the ``keys`` that the section ``where`` (fields ``names``) does not have."""
    prefix = f"{where}." if where else ""
    shown = [repr(prefix + str(key)) + (f" (moved to {MOVED[prefix + str(key)]!r})" if prefix + str(key) in MOVED
                                        else _suggest(key, names, prefix)) for key in keys]
    return f"unknown key{'s' if len(shown) > 1 else ''} {', '.join(shown)}; {where or 'the top level'} has {names}"


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, recursing into sections; unknown keys are errors.
    The loss options (:class:`RLSDOptions`) check themselves: each bad one is named under ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ConfigError(_unknown(unknown, names, where))
    kwargs = {}
    for key, value in data.items():
        kind, _ = _unwrap(hints[key])
        section = dataclasses.is_dataclass(kind) and isinstance(value, dict)
        kwargs[key] = _build(kind, value, f"{where}.{key}".lstrip(".")) if section else value
    if cls is RLSDOptions:
        problems = [f"{where}.{p}" for key, value in kwargs.items() if (p := RLSDOptions.problem(key, value))]
        if problems:
            raise ConfigError("; ".join(problems))
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, {} if data is None else data, "").validate()


def _field_type(dotted: str):
    """The annotated type of the config key ``dotted`` (None inside free-form option mappings)."""
    cls, where = Config, ""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(_unknown([part], names, where))
        kind, _ = _unwrap(typing.get_type_hints(cls)[part])
        where = f"{where}.{part}".lstrip(".")
        if i == len(parts) - 1 or kind is dict:
            return kind if i == len(parts) - 1 else None
        if not dataclasses.is_dataclass(kind):
            raise ConfigError(f"{where} is a value, not a section: cannot set {dotted!r}")
        cls = kind


def parse_value(text: str):
    """A command-line value: JSON if it parses (numbers, true/false/null, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_override(data: dict, item: str) -> None:
    """Apply one ``--set key.sub=value`` to the raw mapping ``data``; string fields take the text as is."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-5")
    try:
        kind = _field_type(key)
    except ConfigError as exc:
        raise ConfigError(f"--set {item!r}: {exc}") from None
    *path, last = key.split(".")
    node = data
    for i, part in enumerate(path):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:i + 1])} is {_show(node[part])}, not a mapping")
        node = node[part]
    node[last] = text if kind is str else parse_value(text)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a number (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(path: str) -> dict:
    """The top-level mapping of the YAML file ``path``; :class:`ConfigError` naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable UTF-8 text file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, ...), got {_show(data)}")
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> Config:
    """Read YAML at ``path``, apply ``key.sub=value`` overrides (values: see :func:`parse_value`) and
    validate everything, including that the data files and the model directory it names exist and
    that its verifier can run here."""
    data = read_yaml(path) if path else {}
    for item in overrides or []:
        apply_override(data, item)
    source = (path or "config") + (f" with --set {' '.join(overrides)}" if overrides else "")
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    problems = environment_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
