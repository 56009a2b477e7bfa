"""Reading the JSON and YAML files users hand us (rollouts, data, configs, model folders, checkpoint
records), strictly, with one-line errors that name the file and the fix.

JSON is standard JSON only: no NaN / Infinity, no number that overflows to infinity (1e999) or past
Python's digit limit, no key given twice (Python would keep the last silently), UTF-8. YAML may use anchors and aliases, but not one that refers to itself, and
the document may not expand (aliases copied out) beyond MAX_YAML_NODES nodes: an "alias bomb" of a
few lines would otherwise expand forever in the config loader.

Each reader takes `error`, the exception type its caller reports (ConfigError, DataError, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_YAML_NODES = 1_000_000


class FileError(ValueError):
    """A file that is not what it should be; the message names the file and the problem."""


def parse_json(text: str | bytes, where: str, error: type[Exception] = FileError) -> Any:
    """`text` as strict JSON; `where` names it in errors ("rollouts.jsonl line 3")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where}: not UTF-8 text (byte {e.start + 1}): save it as UTF-8") from None

    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number (write a finite number, or null)")

    def number(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"{literal} overflows to infinity (write a finite number)")
        return value

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"key {key!r} is given twice (keep one)")
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=constant, parse_float=number, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # our hooks, and integers beyond Python's digit limit
        raise error(f"{where}: not valid JSON ({e})") from None


def read_json(path: str | Path, error: type[Exception] = FileError, *, expect: type = dict,
              what: str | None = None) -> Any:
    """The strict JSON content of `path`, which must be a `expect` (dict: an object, list: an array)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    value = parse_json(data, str(path), error)
    if not isinstance(value, expect):
        kind = {dict: "a JSON object ({...})", list: "a JSON array ([...])"}.get(expect, expect.__name__)
        raise error(f"{path}: expected {kind}{' (' + what + ')' if what else ''}, got {type(value).__name__}")
    return value


def check_yaml(path: str | Path, error: type[Exception] = FileError) -> None:
    """Refuse a YAML file whose aliases refer to themselves or expand it beyond MAX_YAML_NODES nodes.

    Composing (no construction) keeps every alias as one shared node, so the check is linear in the
    file; the expanded size is then counted per distinct node with memoisation."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: YAML syntax error: {' '.join(str(e).split())}") from None
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise error(f"{path}: a YAML alias refers to its own anchor (line {node.start_mark.line + 1}): "
                        "the value would be infinite")
        active.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else []
        total = 1 + sum(size(c) for c in children)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise error(f"{path}: the YAML expands to more than {MAX_YAML_NODES:,} values through its aliases "
                        "(an alias bomb?): write the values out, or use fewer nested aliases")
        sizes[key] = total
        return total

    if root is not None:
        size(root)


# The model-folder files we, vLLM or transformers read as JSON objects; a damaged one is named here
# instead of failing deep inside a library.
MODEL_JSON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")


def check_model_dir(model_dir: str | Path, error: type[Exception] = FileError) -> dict:
    """Check the JSON files of an HF model folder (those present); returns its config.json."""
    model_dir = Path(model_dir)
    found = {}
    for name in MODEL_JSON:
        if (model_dir / name).is_file():
            found[name] = read_json(model_dir / name, error)
    if "config.json" not in found:
        raise error(f"{model_dir}: no config.json (is this a Hugging Face model folder?)")
    return found["config.json"]


def load_tokenizer(model_dir: str | Path, error: type[Exception] = FileError):
    """transformers' tokenizer of `model_dir`, after check_model_dir; its failures as one line."""
    from transformers import AutoTokenizer

    check_model_dir(model_dir, error)
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # noqa: BLE001 - tokenizers/transformers raise many kinds on a damaged file
        raise error(f"{model_dir}: its tokenizer files cannot be loaded ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}): copy the base model's tokenizer files there") from None
