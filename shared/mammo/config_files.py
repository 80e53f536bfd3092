"""Configuration files and ``key=value`` pairs: safe YAML with every key once, a config file
read with one-line errors (missing, not UTF-8, not YAML, too deep, not a mapping), ``--set``
pairs merged by dotted key, and the result validated into a pydantic model (``load_config``) or
written back (``dump_config``). The models themselves are in ``mammo.config``. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mammo.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last
    silently: a config whose second ``epochs:`` wins is a mistake the user should see)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, mark: Any) -> None:
        super().__init__(f"key {key!r} appears twice")
        self.key, self.problem_mark = key, mark


def load_yaml(text: str) -> Any:
    """Safe YAML, with every key of a mapping written once."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML so numbers, booleans, null and lists get their types."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_pair(pair: str, flag: str, example: str) -> tuple[str, str]:
    """``key=value`` from a repeatable option (--set, --param); one-line error otherwise."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {pair!r}: expected key=value, e.g. {flag} {example}")
    return key.strip(), raw


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming every offending field, e.g. ``config.yaml: data.image_size: ...``."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return f"{source}: " + "; ".join(parts)


#: A config file is a page of settings; anything larger, or nested deeper, is not one.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 100


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets (``[``, ``{``) in ``text``."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty one); one-line errors otherwise:
    missing or unreadable file, not UTF-8, not YAML, nested absurdly deep, not a mapping."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        if _flow_depth(text) > MAX_CONFIG_DEPTH:  # fails fast; the parser would recurse that deep
            raise RecursionError
        loaded = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: line {exc.problem_mark.line + 1}: key {exc.key!r} appears twice") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({exc.__class__.__name__})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded or {}


def load_config(
    model: type[ConfigT],
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> ConfigT:
    """Resolve defaults < ``base`` (e.g. a preset) < YAML file < ``--set`` pairs < explicit
    overrides (dotted keys); the file's top-level keys replace the base's."""
    tree: dict[str, Any] = dict(base or {})
    source = "config"
    if config_file is not None:
        source = str(config_file)
        tree.update(read_yaml_mapping(config_file))
    for item in sets or []:
        key, raw = split_pair(item, "--set", "loss.name=focal")
        _set_dotted(tree, key, parse_value(raw))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def dump_config(config: BaseModel) -> str:
    """YAML text of a resolved config, loadable again with ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
