"""The hardened YAML loader of spec files: safe, bounded, one-line errors.

A spec file is read with yaml's safe loader, refusing duplicate keys, reading `1e-3` as a float (YAML
1.2), and bounding size, values and nesting before anything walks the data, so a hostile or broken
file is one `SpecError` line, never a hang, a huge allocation or code run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sweeps.spec.common import SpecError, first_line, path_key
from sweeps.train.hints import did_you_mean

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
# Bounds that keep a bad spec a quick error rather than a hang or a huge allocation.
MAX_SPEC_BYTES = 256 * 1024  # the shipped specs are ~1 KiB
MAX_VALUES = 100_000  # values in a spec file, an alias counting each time it is used
MAX_DEPTH = 32  # nesting levels


def resolve_path(ref: str | Path) -> Path:
    """A spec path, or the bare name of a shipped spec (`quick` -> sweeps/specs/quick.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir():
        raise SpecError(f"{ref}: a folder, not a spec file")
    shipped = SPECS_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else ref}.yaml"
    if shipped.exists() and path.parent == Path("."):
        return shipped
    names = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
    hint = did_you_mean(path.stem, names) if path.parent == Path(".") else ""
    raise SpecError(f"{ref}: no such spec file{hint}; shipped specs: {', '.join(names)}")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml's safe loader (libyaml's when built: 7x faster on a big file), refusing duplicate keys:
    a key given twice would otherwise silently take its last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-3` as a string; YAML 1.2 and every user read it as a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data with the spec loader (safe, no duplicate keys, `1e-3` a float), or one
    SpecError line naming ``source``."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise SpecError(f"{source}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: not valid YAML: nested too deeply") from None
    _check_shape(data, source)
    return data


def read_yaml(path: Path) -> Any:
    """A spec file's data, or one SpecError line: unreadable, too big, not UTF-8, not YAML (duplicate
    keys included), or too large or deep once aliases are expanded."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the file: {e.strerror or first_line(e)}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: over {MAX_SPEC_BYTES // 1024} KiB; a spec file is smaller than that")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return parse_yaml(text, str(path))


def _check_shape(data: Any, source: str) -> None:
    """Bound the values and the nesting before anything walks them: a few aliases can make a small
    file stand for billions of values, and deep nesting exhausts the stack."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    count = 0
    while stack:
        value, loc, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError(f"{source}: {_section(loc)}: over {MAX_VALUES} values in the spec "
                            "(an alias counts each time it is used)")
        if depth > MAX_DEPTH:
            raise SpecError(f"{source}: {_section(loc)}: nested over {MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((v, (*loc, k), depth + 1) for k, v in items)


def _section(loc: tuple) -> str:
    """Where in the file a value sits, for a message: its first few keys, up to a list index."""
    keys: list[str] = []
    for part in loc[:4]:
        if not isinstance(part, str):
            break
        keys.append(path_key(part))
    return ".".join(keys) or "the file"
