"""Load any table through a small TOML column map.

A column map says which table column feeds which canonical column (with a
unit scale), which columns are computed from others, which columns group the
rows, which column is the target, which hardware the table was measured on,
and which rows to keep, so operator tables load without code changes. The
README ("Column maps") documents every key with two worked examples::

    name = "aiconfigurator-moe"
    description = "Fused MoE layer latency on H100 (vLLM 0.24)"
    files = ["moe_perf*.parquet"]         # file names the map is picked for automatically
    hardware = "h100-sxm"                 # datasheet (features/hardware/) joined as hw.* columns
    group_columns = ["shape"]             # columns usable for leave-one-group-out
    experiment = "{moe_dtype}-{distribution}"   # optional format for experiment_id
    path_columns = "{hardware}_runs/{model}/moe_perf.parquet"  # optional: columns from the file path

    [target]
    column = "latency"                    # or columns = [...], summed
    unit = "ms"                           # converted to µs

    [features]                             # canonical column ← table column
    "batch.scheduled_tokens" = "num_tokens"
    "arch.intermediate_size" = { column = "inter_k", scale = 1024 }

    [derived]                              # new columns
    shape = "{hidden_size}x{inter_size}"  # text (a group column): a format string
    tokens = "batch * kv_len"             # a number: an expression over columns
    matrices = { column = "shape", values = { "2688x1856" = 2 }, default = 3 }   # a number per value of a column

    [filters]                              # keep rows whose column equals (or is in) the value
    moe_dtype = "bfloat16"
    distribution = ["balanced"]

    [constants]                            # canonical columns set to a constant
    "arch.num_layers" = 1

Every key is checked: an unknown key, a value of the wrong type, a canonical
name that does not exist, or an expression outside the whitelist
(:func:`search_spaces.expressions.parse_expression`; never ``eval``) is a
one-line :class:`~features.errors.StepMLError`. Shipped maps live in
``features/colmaps/`` and are addressed by name (``moe_perf``) or by path.
"""
from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from features.errors import StepMLError

UNIT_TO_US = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6, "ns": 1e-3}
COLMAP_DIR = Path(__file__).resolve().parent / "colmaps"

#: Top-level keys of a column map, and the keys of its tables.
TOP_KEYS = ("name", "description", "files", "hardware", "group_columns", "experiment", "path_columns",
            "target", "features", "derived", "filters", "constants")
TARGET_KEYS = ("column", "columns", "unit")
FEATURE_KEYS = ("column", "scale")
LOOKUP_KEYS = ("column", "values", "default")
CANONICAL_PREFIXES = ("step.", "queue.", "batch.", "kv.", "arch.", "hw.", "target.")
#: Canonical columns a map may not set: the loader derives them.
RESERVED = ("experiment_id", "step.id", "target.value_us")
#: Deepest bracket nesting an expression may have.
MAX_NESTING = 50


@dataclass(frozen=True)
class Lookup:
    """A ``[derived]`` number looked up from the value of another column.

    For facts a table does not hold but its rows' groups determine (a model's
    expert MLP is gated or not): ``{ column = "shape", values = { "2688x1856" = 2 },
    default = 3 }``. A row's value is matched as text (``8`` matches ``"8"``);
    a value not listed takes ``default``, or is an error without one.
    """

    column: str
    values: tuple[tuple[str, float], ...]
    default: float | None = None


@dataclass(frozen=True)
class ColumnMap:
    """A parsed column map (see the module docstring for the TOML layout)."""

    name: str
    target: tuple[str, ...]
    target_unit: str = "us"
    features: dict[str, str] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    derived: dict[str, str | Lookup] = field(default_factory=dict)
    filters: dict[str, list[Any]] = field(default_factory=dict)
    constants: dict[str, float] = field(default_factory=dict)
    group_columns: tuple[str, ...] = ()
    experiment: str = ""
    description: str = ""
    source: str = ""
    files: tuple[str, ...] = ()
    hardware: str = ""
    path_columns: str = ""

    def is_expression(self, name: str) -> bool:
        """Whether a ``[derived]`` entry is a numeric expression (else a format string or a lookup)."""
        value = self.derived[name]
        return isinstance(value, str) and "{" not in value


def shipped_maps() -> dict[str, Path]:
    """Names and paths of the column maps shipped with the project."""
    return {p.stem: p for p in sorted(COLMAP_DIR.glob("*.toml"))}


def resolve_map(spec: str | Path) -> Path:
    """A shipped map's name or a path to a TOML file."""
    path = Path(spec)
    if path.suffix == ".toml" and path.is_file():
        return path
    maps = shipped_maps()
    if str(spec) in maps:
        return maps[str(spec)]
    if path.suffix == ".toml":
        raise StepMLError(f"unknown column map '{spec}': no such file")
    raise StepMLError(f"unknown column map '{spec}'; shipped: {', '.join(maps) or 'none'} (or a .toml path)")


def canonical_names() -> frozenset[str]:
    """Every canonical column a map may set: step columns, ``arch.*``/``hw.*`` the features read, groups."""
    from features import catalog
    from features.metadata import Hardware, ModelArch, arch_columns
    from features.schema import canonical_dtypes

    names = set(canonical_dtypes())
    for feature in catalog.registry().values():
        names.update(feature.inputs)
    names.update(arch_columns(ModelArch("x", 1, 8, 1, 1, 8, 8, 8), Hardware("x", 1.0, 1.0, 1.0, 1.0), 1))
    return frozenset(names)


def _suggest(name: str, valid: frozenset[str] | list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(valid), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def load_colmap(spec: str | Path) -> ColumnMap:
    """Parse and check a column map TOML file (every problem is a one-line :class:`StepMLError`)."""
    path = resolve_map(spec)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: malformed TOML ({exc})") from None
    return parse_colmap(doc, path)


def parse_colmap(doc: Mapping[str, Any], path: Path | str = "column map") -> ColumnMap:
    """Check a parsed TOML document and build the :class:`ColumnMap`."""
    where = str(path)
    _known_keys(doc, TOP_KEYS, where, "")
    target = _table(doc, "target", where)
    _known_keys(target, TARGET_KEYS, where, "[target] ")
    if "column" in target and "columns" in target:
        raise StepMLError(f"{where}: [target] takes 'column' or 'columns', not both")
    if "columns" in target:
        columns = _strings(target["columns"], where, "[target] columns")
    elif "column" in target:
        columns = [_string(target["column"], where, "[target] column")]
    else:
        columns = []
    if not columns:
        raise StepMLError(f"{where}: [target] needs 'column' (or 'columns', summed)")
    unit = target.get("unit", "us")
    if not isinstance(unit, str) or unit not in UNIT_TO_US:
        raise StepMLError(f"{where}: unknown target unit {unit!r}; valid: {', '.join(UNIT_TO_US)}")
    canonical = canonical_names()
    features: dict[str, str] = {}
    units: dict[str, float] = {}
    for name, value in _table(doc, "features", where).items():
        _canonical(name, canonical, where, "[features]")
        if isinstance(value, dict):
            _known_keys(value, FEATURE_KEYS, where, f"[features] '{name}' ")
            if "column" not in value:
                raise StepMLError(f"{where}: [features] '{name}' needs a 'column' (and optional 'scale')")
            features[name] = _string(value["column"], where, f"[features] '{name}' column")
            units[name] = _number(value.get("scale", 1.0), where, f"[features] '{name}' scale")
        else:
            features[name] = _string(value, where, f"[features] '{name}'")
    derived = {}
    for name, value in _table(doc, "derived", where).items():
        entry = parse_derived_entry(value, where, f"[derived] '{name}'")
        if name.startswith(CANONICAL_PREFIXES) or name in RESERVED:
            _canonical(name, canonical, where, "[derived]")
        if not (isinstance(entry, str) and "{" in entry) and name in features:
            raise StepMLError(f"{where}: '{name}' is set in both [features] and [derived]")
        derived[name] = entry
    filters = parse_filters(doc, where)
    constants = {}
    for name, value in _table(doc, "constants", where).items():
        _canonical(name, canonical, where, "[constants]")
        if name.startswith("hw."):
            raise StepMLError(f"{where}: [constants] '{name}': hardware figures come from a datasheet; set "
                              "hardware = \"NAME\" (a shipped datasheet or a .json path) instead")
        if name in features or name in derived:
            raise StepMLError(f"{where}: '{name}' is set twice ([constants] and [features]/[derived])")
        constants[name] = _number(value, where, f"[constants] '{name}'")
    groups = _strings(doc.get("group_columns", []), where, "group_columns")
    hardware = _string(doc.get("hardware", ""), where, "hardware", empty=True)
    if hardware.endswith(".json") and not Path(hardware).is_absolute() and isinstance(path, Path):
        hardware = str(path.parent / hardware)
    path_columns = _string(doc.get("path_columns", ""), where, "path_columns", empty=True)
    if path_columns:
        fields = _template_fields(path_columns, where, "path_columns")
        if not fields:
            raise StepMLError(f"{where}: path_columns {path_columns!r} names no {{column}}")
    experiment = _string(doc.get("experiment", ""), where, "experiment", empty=True)
    if experiment:
        _template_fields(experiment, where, "experiment")
    return ColumnMap(
        name=_string(doc.get("name", Path(where).stem), where, "name"), target=tuple(columns), target_unit=unit,
        features=features, units=units, derived=derived, filters=filters, constants=constants,
        group_columns=tuple(groups), experiment=experiment,
        description=_string(doc.get("description", ""), where, "description", empty=True), source=where,
        files=tuple(_strings(doc.get("files", []), where, "files")), hardware=hardware, path_columns=path_columns,
    )


def parse_derived_entry(value: Any, where: str, what: str) -> str | Lookup:
    """One ``[derived]`` value: a format string, an expression (both text) or a :class:`Lookup` table."""
    if not isinstance(value, dict):
        text = _string(value, where, what)
        if "{" in text:
            _template_fields(text, where, what)
        return text
    _known_keys(value, LOOKUP_KEYS, where, f"{what} ")
    if "column" not in value or "values" not in value:
        raise StepMLError(f"{where}: {what} needs 'column' and 'values' (and an optional 'default'), e.g. "
                          "{ column = \"shape\", values = { \"4096x14336\" = 3 }, default = 3 }")
    values = value["values"]
    if not isinstance(values, dict) or not values:
        raise StepMLError(f"{where}: {what} values must be a non-empty table of value = number, got {values!r}")
    pairs = tuple((str(k), _number(v, where, f"{what} values '{k}'")) for k, v in values.items())
    default = _number(value["default"], where, f"{what} default") if "default" in value else None
    return Lookup(_string(value["column"], where, f"{what} column"), pairs, default)


def parse_filters(doc: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    """The ``[filters]`` table of a map: column → accepted values (a value or a list of values)."""
    filters = {}
    for name, value in _table(doc, "filters", where).items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise StepMLError(f"{where}: [filters] '{name}' must be a value or a list of values, got {value!r}")
        filters[name] = values
    return filters


def _known_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str, what: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        raise StepMLError(f"{where}: unknown {what}key(s) {', '.join(map(repr, unknown))}"
                          f"{_suggest(unknown[0], list(known))}; valid: {', '.join(known)}")


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise StepMLError(f"{where}: [{key}] must be a table (a [{key}] section), got {type(value).__name__} "
                          f"{value!r}")
    return value


def _string(value: Any, where: str, what: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise StepMLError(f"{where}: {what} must be a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise StepMLError(f"{where}: {what} must be a list of strings (e.g. [\"shape\"]), got {value!r}")
    return list(value)


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StepMLError(f"{where}: {what} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise StepMLError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def _canonical(name: str, canonical: frozenset[str], where: str, what: str) -> None:
    if name in RESERVED:
        raise StepMLError(f"{where}: {what} '{name}' is set by the loader, not by a map")
    if name not in canonical:
        raise StepMLError(f"{where}: {what} '{name}' is not a canonical column{_suggest(name, canonical)}; "
                          "see the README's column-map section for the list")


def _template_fields(template: str, where: str, what: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise StepMLError(f"{where}: {what} {template!r} is not a format string ({exc})") from None
    names = [f for _, f, spec, conv in parsed if f is not None]
    bad = [f for f in names if not f or any(c in f for c in "[].!:")]
    if bad or any(spec or conv for _, f, spec, conv in parsed if f is not None):
        raise StepMLError(f"{where}: {what} {template!r}: write plain {{column}} fields (no index, attribute, "
                          "conversion or format spec)")
    return names


# -- applying a map ------------------------------------------------------------------------

def _numeric(raw: pd.DataFrame, column: str, source: str, role: str) -> pd.Series:
    """A table column as floats; values that are present but not numbers raise :class:`StepMLError`."""
    series = raw[column]
    if series.dtype == bool or series.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        raise StepMLError(f"{source}: column '{column}' ({role}) holds booleans, not numbers")
    values = pd.to_numeric(series, errors="coerce").astype(float)
    bad = values.isna().to_numpy() & series.notna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        value = series.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        raise StepMLError(f"{source}: column '{column}' ({role}) has {int(bad.sum())} non-numeric value(s), "
                          f"first {value!r} at row {first}")
    return values


def _format_rows(frame: pd.DataFrame, template: str, what: str = "column map") -> pd.Series:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise StepMLError(f"{what}: format '{template}' names unknown column(s): {', '.join(missing)}")
    parts = {n: frame[n].astype(str).to_numpy() for n in names}
    return pd.Series([template.format(**{n: parts[n][i] for n in names}) for i in range(len(frame))],
                     index=frame.index, dtype=object)


_FUNCTIONS: dict[str, Callable[..., Any]] | None = None


def _functions() -> dict[str, Callable[..., Any]]:
    """Functions an expression may call (lower-case spellings of the sympy constructors)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import sympy

        _FUNCTIONS = {"max": sympy.Max, "min": sympy.Min, "abs": sympy.Abs, "sqrt": sympy.sqrt,
                      "log": sympy.log, "exp": sympy.exp}
    return _FUNCTIONS


def parse_derived(text: str, columns: list[str] | pd.Index, what: str = "expression") -> Any:
    """Parse an expression over table columns with the whitelist parser (numbers, columns, + - * / **,
    ``max min abs sqrt log exp``). A column whose name is not an identifier is written ``Symbol('name')``.
    """
    import sympy

    from search_spaces.expressions import parse_expression

    have = [str(c) for c in columns]
    depth = deepest = 0
    for ch in str(text):
        depth += (ch in "([{") - (ch in ")]}")
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:  # Python's own parser gives up (MemoryError) near 200 levels
        raise StepMLError(f"{what} '{str(text)[:60]}...': brackets nested deeper than {MAX_NESTING}")

    def resolve(name: str) -> Any:
        if name not in have:
            raise StepMLError(f"{what} '{text}' names unknown column '{name}'{_suggest(name, have)}; "
                              f"the table has: {', '.join(have)}")
        return sympy.Symbol(name, real=True)  # table values are real: sympy keeps Abs(exp(a)) as exp(a), not re()

    return parse_expression(text, resolve, _functions(), symbol=resolve, what=what)


def evaluate_derived(expr: Any, frame: pd.DataFrame, source: str, what: str) -> np.ndarray:
    """Evaluate a parsed expression on a table, vectorised with numpy; non-finite results are errors."""
    n = len(frame)
    cache: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = _numeric(frame, name, source, what).to_numpy(dtype=float)
        return cache[name]

    with np.errstate(all="ignore"):
        values = np.broadcast_to(np.asarray(_evaluate(expr, column), dtype=float), (n,)).astype(float)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StepMLError(f"{source}: {what} is not a finite number at {int(bad.sum())} row(s), first row {first} "
                          f"({values[first]!r}; a missing value, a division by zero or an overflow)")
    return values


def _evaluate(expr: Any, column: Callable[[str], np.ndarray]) -> Any:
    """numpy value of a sympy expression tree built by :func:`parse_derived` (a closed set of node types)."""
    import sympy

    if expr.is_Symbol:
        return column(expr.name)
    if expr.is_number:  # 2, 0.5, and constants sympy writes symbolically (E for exp(1), sqrt(2))
        return float(expr)
    args = [_evaluate(a, column) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return sum(args[1:], args[0])
    if isinstance(expr, sympy.Mul):
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if isinstance(expr, sympy.Pow):
        return np.power(np.asarray(args[0], dtype=float), args[1])
    if isinstance(expr, sympy.Max):
        return np.maximum.reduce(np.broadcast_arrays(*[np.asarray(a, dtype=float) for a in args]))
    if isinstance(expr, sympy.Min):
        return np.minimum.reduce(np.broadcast_arrays(*[np.asarray(a, dtype=float) for a in args]))
    if isinstance(expr, sympy.Abs):
        return np.abs(args[0])
    if isinstance(expr, sympy.log):
        return np.log(args[0])
    if isinstance(expr, sympy.exp):
        return np.exp(args[0])
    raise StepMLError(f"expression {expr}: '{type(expr).__name__}' cannot be evaluated on a table")


def _lookup_rows(raw: pd.DataFrame, lookup: Lookup, source: str, what: str) -> np.ndarray:
    """The numbers a :class:`Lookup` gives the rows of ``raw`` (a value it does not list needs a default)."""
    if lookup.column not in raw.columns:
        raise StepMLError(f"{source}: {what} looks up unknown column '{lookup.column}'"
                          f"{_suggest(lookup.column, list(map(str, raw.columns)))}")
    keys = raw[lookup.column].astype(str)
    table = dict(lookup.values)
    values = keys.map(table).astype(float)
    missing = values.isna().to_numpy()
    if missing.any():
        if lookup.default is None:
            first = int(np.flatnonzero(missing)[0])
            raise StepMLError(f"{source}: {what} lists no value for {lookup.column} = {keys.iloc[first]!r} "
                              f"({int(missing.sum())} row(s)) and has no default")
        values[missing] = lookup.default
    return values.to_numpy(dtype=float)


def add_derived(raw: pd.DataFrame, derived: Mapping[str, str | Lookup], original: Any, source: str,
                label: str) -> None:
    """Add a map's ``[derived]`` columns to ``raw`` in file order (a later one may use an earlier one).

    A text with ``{column}`` fields is a format string (text), a :class:`Lookup`
    a number per value of a column, anything else an expression read by
    :func:`parse_derived`; a name of one of the ``original`` table columns is refused.
    """
    for name, entry in derived.items():
        what = f"{label} [derived] '{name}'"
        if name in original:
            raise StepMLError(f"{source}: {what} would replace the table's column '{name}'; give it another name")
        if isinstance(entry, Lookup):
            raw[name] = _lookup_rows(raw, entry, source, what)
        elif "{" in entry:
            raw[name] = _format_rows(raw, entry, what)
        else:
            raw[name] = evaluate_derived(parse_derived(entry, raw.columns, what), raw, source, what)


def path_values(path: Path, cmap: ColumnMap) -> dict[str, str]:
    """The ``path_columns`` fields of one file's path (matched against its last folders and name).

    ``"vidur_{hardware}/{model}/mlp.csv"`` on ``…/vidur_h100/Llama-2-7b-hf/mlp.csv`` gives
    ``{"hardware": "h100", "model": "Llama-2-7b-hf"}``; each field matches within one path component
    (a field named twice must match the same text both times).
    """
    pattern, names = "", []
    for literal, name, _, _ in string.Formatter().parse(cmap.path_columns):
        pattern += re.escape(literal)
        if name is not None:
            pattern += f"(?P<g{len(names)}>[^/]+?)"
            names.append(name)
    text = Path(path).resolve().as_posix()
    match = re.search(r"(?:^|/)" + pattern + "$", text)
    values: dict[str, str] = {}
    for k, name in enumerate(names if match else []):
        if values.setdefault(name, match.group(f"g{k}")) != match.group(f"g{k}"):  # type: ignore[union-attr]
            match = None
            break
    if match is None:
        raise StepMLError(f"{path}: the file path does not match path_columns '{cmap.path_columns}' of "
                          f"column map '{cmap.name}'")
    return values


def _filter(raw: pd.DataFrame, cmap: ColumnMap, source: str, columns: list[str]) -> pd.DataFrame:
    keep = np.ones(len(raw), dtype=bool)
    for column in columns:
        keep &= raw[column].isin(cmap.filters[column]).to_numpy()
    raw = raw.loc[keep].reset_index(drop=True)
    if raw.empty:
        raise StepMLError(f"{source}: column map '{cmap.name}' filters left no rows")
    return raw


def apply_colmap(table: pd.DataFrame, cmap: ColumnMap, source: str = "table", *,
                 path: Path | None = None, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Turn a raw table into canonical columns through ``cmap``.

    Unknown columns named by the map, non-numeric values in a mapped feature or
    target column and non-finite derived values raise :class:`StepMLError`. The
    result has the mapped canonical columns, the derived columns (text ones as
    group columns, numeric ones as numbers), the ``path_columns`` fields of
    ``path``, filter columns, ``group_columns`` taken as they are from the
    table, ``experiment_id``, the raw columns named in ``extra`` (for a raw
    ``--target``), and the target in µs as ``target.value_us`` (also the
    default target of such tables).
    """
    raw = table.copy()
    raw.columns = [str(c) for c in raw.columns]
    if cmap.path_columns:
        if path is None:
            raise StepMLError(f"column map '{cmap.name}' has path_columns, which need the data file's path")
        for name, value in path_values(path, cmap).items():
            raw[name] = value
    produced = set(cmap.features) | set(cmap.constants) | set(cmap.derived) | {"experiment_id", "step.id"}
    raw_groups = [c for c in cmap.group_columns if c not in produced]
    needed = set(cmap.features.values()) | set(cmap.filters) | set(cmap.target) | set(raw_groups)
    missing = sorted(c for c in needed if c not in raw.columns and c not in cmap.derived)
    if missing:
        raise StepMLError(f"{source}: column map '{cmap.name}' names unknown column(s): "
                          f"{', '.join(missing)}; the table has: {', '.join(map(str, table.columns))}")
    raw = _filter(raw, cmap, source, [c for c in cmap.filters if c not in cmap.derived])
    add_derived(raw, cmap.derived, table.columns, source, f"column map '{cmap.name}'")
    raw = _filter(raw, cmap, source, [c for c in cmap.filters if c in cmap.derived])
    out = pd.DataFrame(index=raw.index)
    for canonical, column in cmap.features.items():
        out[canonical] = _numeric(raw, column, source, f"feature '{canonical}'") * cmap.units.get(canonical, 1.0)
    for canonical, value in cmap.constants.items():
        out[canonical] = value
    for name in cmap.derived:
        out[name] = raw[name].to_numpy()
    path_fields = [n for _, n, _, _ in string.Formatter().parse(cmap.path_columns or "") if n is not None]
    for column in list(cmap.filters) + raw_groups + path_fields + [c for c in extra if c in raw.columns]:
        if column not in out.columns:
            out[column] = raw[column].to_numpy()
    out["experiment_id"] = _format_rows(raw, cmap.experiment, f"column map '{cmap.name}' experiment") if cmap.experiment \
        else cmap.name
    out["step.id"] = np.arange(len(raw), dtype=np.int64)
    value = sum(_numeric(raw, c, source, "target") for c in cmap.target)
    out["target.value_us"] = value * UNIT_TO_US[cmap.target_unit]
    return out
