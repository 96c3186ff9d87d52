"""Command configs: dataclasses read from `--config FILE.yaml` plus `--key value` overrides (every `rlhf` command)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf.errors import ConfigError

# Why not `HfArgumentParser`: it accepts unknown YAML keys only by failing without naming close valid keys or the
# YAML line, and it turns ~130 TrainingArguments fields into argparse flags. Here every key is checked against the
# dataclass, with the file, line and nearest valid names in the error.

C = TypeVar("C")


def config_keys(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _unknown_key(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{where}: unknown config key '{key}'{hint}")


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """YAML mapping and the line of each top-level key (for error messages)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    return data, lines


def field_types(cls) -> dict[str, Any]:
    """Each key's type, resolved also where annotations are strings (modules with `from __future__ import
    annotations`); a key whose annotation does not resolve keeps what its field says."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # a third-party base class may annotate with names it does not import
        hints = {}
    return {name: hints.get(name, f.type) for name, f in config_keys(cls).items()}


def _is_str_type(tp) -> bool:
    if tp is str:
        return True
    args = typing.get_args(tp)
    return bool(args) and str in args and not any(typing.get_origin(a) in (list, dict) for a in args)


def _is_list_type(tp) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def _parse_cli_value(raw: str, tp: Any, key: str) -> Any:
    """Typed value of `--key raw`: a string key takes the text as written (null: None); other keys read YAML
    syntax (numbers, true/false, [a, b], {a: 1}, null)."""
    if _is_str_type(tp):
        return None if raw in ("null", "~") and type(None) in typing.get_args(tp) else raw
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: --{key} '{raw}' is not a valid value: {getattr(e, 'problem', e)}") from e
    if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string; numbers are numbers here
        try:
            value = float(raw)
        except ValueError:
            pass
    return value


def _yaml_list(raw: str) -> list | None:
    """`raw` read as a YAML list (`[a, b]`), or None when it is not one."""
    if not raw.lstrip().startswith("["):
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, list) else None


def _is_bool_type(tp) -> bool:
    return tp is bool or (bool in typing.get_args(tp) and all(a in (bool, type(None)) for a in typing.get_args(tp)))


BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")


def parse_overrides(argv: list[str], types: dict[str, Any],
                    positional: tuple[str, ...] = ()) -> tuple[str | None, dict[str, Any]]:
    """(`--config` path, {key: value}) from `--config F --key value --key=value --flag` and bare POSITIONAL values.

    `--some-key` is read as `some_key`; a yes/no key given bare (`--flag`) is true and takes a value only if it reads
    as one (`--flag false`); a list key given several times (`--prompt a --prompt b`) collects them, and so does a
    list key named last in POSITIONAL with every bare argument left. Bare arguments may stand anywhere."""
    config_path, overrides, i = None, {}, 0
    leading = list(positional)

    def add(name: str, raw: str) -> None:
        if not _is_list_type(types[name]):
            overrides[name] = _parse_cli_value(raw, types[name], name)
        elif (whole := _yaml_list(raw)) is not None:  # `--key [a, b]`: the whole list
            overrides[name] = whole
        else:
            overrides[name] = [*overrides.get(name, []), raw]  # one more item, as written

    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if not leading:
                names = f" (this command takes {', '.join(positional)} without a key)" if positional else ""
                raise ConfigError(f"unexpected argument '{arg}'{names}; options are written --key value")
            add(leading[0], arg)
            if not _is_list_type(types[leading[0]]):
                leading.pop(0)
            continue
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key != "config" and key not in types:
            raise _unknown_key(key, types, "command line")
        if not eq:
            nxt = argv[i] if i < len(argv) else None
            is_flag = key != "config" and _is_bool_type(types[key])
            if nxt is None or nxt.startswith("--") or (is_flag and nxt.lower() not in BOOL_WORDS):
                raw = "true"  # a bare --flag means true
            else:
                raw, i = nxt, i + 1
        if key == "config":
            config_path = raw
        else:
            add(key, raw)
    return config_path, overrides


def load_config(cls: type[C], argv: list[str], overrides: dict[str, Any] | None = None) -> C:
    """Build `cls` from `--config FILE.yaml`, then `--key value` arguments, then `overrides` (later wins)."""
    valid = field_types(cls)
    config_path, cli_values = parse_overrides(argv, valid, getattr(cls, "POSITIONAL", ()))
    for name in overrides or {}:
        if name not in valid:
            raise _unknown_key(name, valid, "overrides")
    values: dict[str, Any] = {}
    source: dict[str, str] = {}  # where each key's value was set, for errors
    if config_path:
        data, lines = read_yaml(config_path)
        for key in data:
            if key not in valid:
                raise _unknown_key(key, valid, f"{config_path}:{lines.get(key, '?')}")
        values.update(data)
        source.update({key: f"{config_path}:{lines.get(key, '?')}" for key in data})
    values.update(cli_values)
    source.update(dict.fromkeys(cli_values, "command line"))
    values.update(overrides or {})
    source.update(dict.fromkeys(overrides or {}, "overrides"))
    try:
        return cls(**values)
    except (TypeError, ValueError, ConfigError) as e:
        raise ConfigError(f"{_blamed(str(e), source, config_path)}: {e}") from e


def _blamed(message: str, source: dict[str, str], config_path: str | None) -> str:
    """Where the value that `message` (a check's error, which starts with its key) came from: the file and line,
    the command line or the overrides; the config file (or the command line) when it names no key set there."""
    first = message.split(" ", 1)[0].strip("'\":,")
    return source.get(first) or config_path or "command line"


def config_help(cls, title: str) -> str:
    """Text for `rlhf STAGE --help`: the stage's own keys with their help, then a note on inherited ones."""
    first = "".join(f"{name.upper()} " for name in getattr(cls, "POSITIONAL", ()))
    lines = [title, "", f"usage: {first}[--config FILE.yaml] [--key value ...]", "", "keys:"]
    for f in dataclasses.fields(cls):
        if f.init and f.metadata.get("stage"):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            lines.append(f"  --{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    inherited = [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("stage")]
    if inherited:
        lines += ["", f"plus {len(inherited)} keys of the underlying TRL/transformers config, e.g.:",
                  "  " + ", ".join(inherited[:12]) + ", ..."]
    return "\n".join(lines)


def key(default: Any, help: str) -> Any:
    """A stage config field with its help text (shown by `--help`)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, "stage": True})
    return dataclasses.field(default=default, metadata={"help": help, "stage": True})


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def config_to_dict(config) -> dict[str, Any]:
    """The resolved config as plain YAML-able values (only init fields, i.e. keys a user can set)."""
    return {name: _plain(getattr(config, name)) for name in config_keys(type(config))}


def save_config(config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def wants_help(argv: list[str], cls, title: str) -> bool:
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, title))
        return True
    return False


def command_main(argv: list[str], cls: type[C], doc: str, run: typing.Callable[[C], Any]) -> int:
    """Entry point of every `rlhf COMMAND`: `--help` from the config's keys, else load the config and run it."""
    if wants_help(argv, cls, doc.strip().splitlines()[0]):
        return 0
    result = run(load_config(cls, argv))
    return result if isinstance(result, int) else 0


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()




def import_function(spec: str, key: str) -> typing.Callable:
    """The function a `module:function` config value names (the reward function, gold judge, annotator rule)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key} '{spec}' must be written module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key} '{spec}': cannot import module '{module_name}': {e}") from e
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"{key} '{spec}': module '{module_name}' has no function '{attr}'")
    return function
