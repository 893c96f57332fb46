"""Reading YAML for a config (files and `--set` values) with bounded nesting and alias expansion, and errors as
one `file:line:column` line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from speakerforge.errors import ConfigError

# A config is small: these bounds stop an alias bomb (a 540-byte file that expands to billions of values) and deep
# nesting (a RecursionError) at load time, before anything walks the document.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 200_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit (its composer recurses once per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def bounded_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load` with bounded nesting and alias expansion; ConfigError (`file:line:col`) otherwise."""
    try:
        loader = _BoundedLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(where, exc)) from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML (nested too deeply)") from None
    _count_values(data, where)
    return data


def _count_values(data: Any, where: str) -> None:
    """Values the document holds once aliases are expanded (shared objects counted at every use), without
    expanding them; more than MAX_YAML_VALUES is refused."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
            what = f"more than {MAX_YAML_VALUES} values" if count > MAX_YAML_VALUES else "nesting too deep"
            raise ConfigError(f"{where}: refused: the YAML expands to {what} (YAML aliases?)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            count += len(node)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    """One line, `file:line:column: invalid YAML (problem)`, from PyYAML's multi-line message."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return f"{at}: invalid YAML ({what or str(exc).splitlines()[0]})"


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document of a config file, read with `bounded_yaml`; ConfigError for a folder, a missing file,
    non-UTF-8 bytes or invalid YAML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a YAML config file")
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return bounded_yaml(p.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected a YAML config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
