"""The server a request log is replayed on: a small YAML file, or an experiment's ``exp-config.yaml``.

``--server FILE.yaml`` describes a vLLM server with vLLM's own setting names
(``-`` or ``_``, as on its command line)::

    model: meta-llama/Llama-2-7b-hf     # a config.json (or a folder holding one), or a model name
    hardware: h100-sxm                  # a datasheet of features/hardware/ (or a .json path)
    tensor_parallel_size: 1             # also tp, tensor_parallelism
    max_num_seqs: 256
    max_num_batched_tokens: 2048
    max_model_len: 4096
    block_size: 16
    enable_prefix_caching: true
    enable_chunked_prefill: true
    gpu_memory_utilization: 0.9
    kv_cache_memory_bytes: 20e9         # KV memory per GPU instead of the estimate
    num_gpu_blocks_override: 7000       # the KV pool in blocks (also num_gpu_blocks)
    long_prefill_token_threshold: 0
    async_scheduling: true

Only ``model`` is required. A missing setting takes vLLM's default, and
:meth:`ServerSpec.describe` says which ones did (the replay prints them):
``tensor_parallel_size`` 1; ``max_num_batched_tokens`` 8192 and ``max_num_seqs``
1024 on a GPU with at least 70 GiB that is not an A100, else 2048 and 256 (the
OpenAI server's defaults of vLLM's ``EngineArgs.get_batch_defaults``;
``max_num_seqs`` is capped at ``max_num_batched_tokens``); ``max_model_len`` the
model's ``max_position_embeddings`` (or the smallest of the other length keys vLLM
reads; rope scaling is not applied: state it for such models); ``block_size`` 16;
prefix caching and chunked prefill on; ``gpu_memory_utilization`` 0.9;
``long_prefill_token_threshold`` 0. ``hardware`` is not a vLLM setting: without it
the server is an ``h100-sxm`` (the project's default, also printed).
``async_scheduling`` left out lets ``--scheduling`` (or an artifact) decide, async
by default as in vLLM since 0.14.

Model names are looked up, in order, in the ``model_configs/`` (or
``blis/model_configs/``) folders beside the log and the server file and in the data
root, then in the BLIS snapshot's ``src/model_configs/``
(:func:`features.metadata.default_blis_root`): first a folder whose name equals the
name's last part (ignoring case and punctuation: ``meta-llama/Llama-2-7b-hf`` finds
``llama-2-7b-hf``), else the one folder whose name starts with it (several: an error
naming them). The KV pool is ``num_gpu_blocks_override`` when given, else
:func:`evaluation.replay_setup.kv_blocks_from_memory` (from ``kv_cache_memory_bytes``,
or estimated from the datasheet's memory, ``gpu_memory_utilization`` and the weights).

:func:`server_from_exp_config` reads an experiment's ``exp-config.yaml`` into the same
:class:`ServerSpec` (the replay of a folder of ``llm_request`` spans).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from evaluation.scheduler import SchedulerConfig
from features.errors import StepMLError
from features.metadata import (DEFAULT_HARDWARE, ExperimentMeta, Hardware, ModelArch, default_blis_root,
                               find_hardware, load_hardware, load_model_config, load_server_config)

__all__ = ["ServerSpec", "load_server_file", "server_from_settings", "server_from_exp_config",
           "find_model_config_path", "model_config_folders", "SETTINGS"]

#: Setting → (type, aliases). Types: ``int``, ``bool``, ``float``, ``str``.
SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model": ("str", ()),
    "hardware": ("str", ()),
    "tensor_parallel_size": ("int", ("tp", "tensor_parallelism")),
    "max_num_seqs": ("int", ()),
    "max_num_batched_tokens": ("int", ()),
    "max_model_len": ("int", ()),
    "block_size": ("int", ()),
    "enable_prefix_caching": ("bool", ()),
    "enable_chunked_prefill": ("bool", ()),
    "gpu_memory_utilization": ("float", ()),
    "kv_cache_memory_bytes": ("float", ()),
    "num_gpu_blocks_override": ("int", ("num_gpu_blocks",)),
    "long_prefill_token_threshold": ("int", ()),
    "async_scheduling": ("bool", ()),
    "description": ("str", ()),
}
_ALIASES = {alias: name for name, (_, aliases) in SETTINGS.items() for alias in (name, *aliases)}
#: Keys vLLM reads a model's context length from (``_get_and_verify_max_len``); the smallest present wins.
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
               "max_seq_length", "seq_len", "model_max_length")
LARGE_GPU_GIB = 70


@dataclass(frozen=True)
class ServerSpec:
    """A vLLM server: model, hardware and scheduler settings (module docstring).

    ``sources`` maps every setting to where its value came from (the server file,
    ``exp-config.yaml``, a vLLM default, the model config, step data).
    """

    model: str
    model_config: Path
    arch: ModelArch
    hardware: str
    hw: Hardware
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: float | None = None
    num_gpu_blocks_override: int | None = None
    long_prefill_token_threshold: int = 0
    async_scheduling: bool | None = None
    source: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def model_name(self) -> str:
        """The model's short name (the last part of an id, or the config's folder for a path)."""
        if Path(self.model).name == "config.json" or self.model.endswith(".json") or Path(self.model).is_dir():
            return self.model_config.parent.name
        return self.model.rstrip("/").rsplit("/", 1)[-1]

    def scheduler_config(self, async_scheduling: bool | None = None) -> SchedulerConfig:
        """The simulator's settings; ``async_scheduling`` (when not None) overrides the file's."""
        mode = self.async_scheduling if async_scheduling is None else async_scheduling
        blocks, _ = self.kv_pool()
        try:
            return SchedulerConfig(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                                   max_model_len=self.max_model_len, block_size=self.block_size, num_gpu_blocks=blocks,
                                   enable_chunked_prefill=self.enable_chunked_prefill,
                                   enable_prefix_caching=self.enable_prefix_caching,
                                   long_prefill_token_threshold=self.long_prefill_token_threshold,
                                   async_scheduling=bool(True if mode is None else mode))
        except ValueError as exc:
            raise StepMLError(f"{self.source}: {exc}") from None

    def kv_pool(self) -> tuple[int | None, str]:
        """``(blocks, where from)``: the override, else from ``kv_cache_memory_bytes`` or the memory estimate."""
        from evaluation.replay_setup import kv_blocks_from_memory

        if self.num_gpu_blocks_override is not None:
            return int(self.num_gpu_blocks_override), self.sources.get("num_gpu_blocks_override", "given")
        blocks = kv_blocks_from_memory(self.arch, self.hw.memory_bytes, self.tensor_parallel_size,
                                       gpu_memory_utilization=self.gpu_memory_utilization,
                                       block_size=self.block_size, kv_cache_memory_bytes=self.kv_cache_memory_bytes)
        if blocks is None:
            raise StepMLError(f"{self.source}: no GPU memory is left for the KV cache of {self.model_name} on "
                              f"{self.tensor_parallel_size} x {self.hardware} (weights "
                              f"{self.arch.total_params * self.arch.bytes_per_param / 1e9:.1f} GB); raise "
                              "tensor_parallel_size or gpu_memory_utilization, or give num_gpu_blocks_override")
        if self.kv_cache_memory_bytes is not None:
            return blocks, f"kv_cache_memory_bytes {self.kv_cache_memory_bytes:.4g} per GPU"
        return blocks, "estimated from model and GPU memory"

    def meta(self, experiment_id: str, workload: str = "") -> ExperimentMeta:
        """The :class:`~features.metadata.ExperimentMeta` a replay's predictor constants come from."""
        return ExperimentMeta(experiment_id, self.model_name, workload, self.tensor_parallel_size, None, None,
                              self.arch, self.hw)

    def settings(self) -> dict[str, Any]:
        """Every setting's value (JSON-ready), ``model_config`` the config file used."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in SETTINGS}
        out["model_config"] = str(self.model_config)
        return out

    def defaults(self) -> list[str]:
        """``name value (why)`` of every setting the description did not give (vLLM's or the model's default)."""
        given = ("server file", "exp-config.yaml")
        return [f"{name} {getattr(self, name)} ({where})" for name, where in self.sources.items()
                if where not in given and not where.startswith("step data")]


# -- model configs ------------------------------------------------------------------------------

def model_config_folders(roots: Sequence[Path]) -> list[Path]:
    """Folders of ``<model>/config.json`` to search: each root's ``model_configs`` and
    ``blis/model_configs``, then the BLIS snapshot's ``src/model_configs``."""
    out: list[Path] = []
    candidates = [root / name for root in roots for name in ("model_configs", Path("blis") / "model_configs")]
    candidates.append(default_blis_root() / "src" / "model_configs")
    for folder in candidates:
        if folder.is_dir() and folder.resolve() not in [f.resolve() for f in out]:
            out.append(folder)
    return out


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def find_model_config_path(model: str, roots: Sequence[Path], base: Path | None = None) -> Path:
    """The ``config.json`` of a model: a path (to the file or its folder, relative to ``base``) or a name.

    Raises
    ------
    StepMLError
        A path that does not exist, a name no folder matches (listing the known
        names), or a name that starts several folders' names.
    """
    text = str(model).strip()
    for path in ([Path(text)] + ([base / text] if base is not None and not Path(text).is_absolute() else [])):
        if path.is_file():
            return path
        if path.is_dir() and (path / "config.json").is_file():
            return path / "config.json"
    if text.endswith(".json") or text.startswith((".", "/", "~")):
        raise StepMLError(f"model config not found: {text}")
    folders = model_config_folders(roots)
    key = _norm(text.rstrip("/").rsplit("/", 1)[-1])
    configs = [[p for p in sorted(f.iterdir()) if (p / "config.json").is_file()] for f in folders]
    for entries in configs:
        for entry in entries:
            if key and _norm(entry.name) == key:
                return entry / "config.json"
    for entries in configs:
        hits = [e for e in entries if key and _norm(e.name).startswith(key)]
        if len(hits) == 1:
            return hits[0] / "config.json"
        if len(hits) > 1:
            raise StepMLError(f"model '{text}' names several configs in {hits[0].parent} "
                              f"({', '.join(h.name for h in hits)}); name one")
    known = sorted({e.name for entries in configs for e in entries})
    where = ", ".join(str(f) for f in folders) or "no model_configs folder found"
    raise StepMLError(f"no model config for '{text}' (searched {where}); known: {', '.join(known) or 'none'}; "
                      "or give the path of its config.json")


def _max_len_of(config_path: Path) -> tuple[int | None, str]:
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ""
    found = {k: raw[k] for k in LENGTH_KEYS if isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool)
             and raw[k] > 0}
    if not found:
        return None, ""
    key = min(found, key=lambda k: found[k])
    note = f"the model config's {key}" + (", rope_scaling not applied" if raw.get("rope_scaling") else "")
    return int(found[key]), note


# -- settings ---------------------------------------------------------------------------------------

def _value(name: str, raw: Any, where: str) -> Any:
    kind = SETTINGS[name][0]
    if kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise StepMLError(f"{where}: {name} must be a non-empty string, got {raw!r}")
        return raw.strip()
    if kind == "bool":
        if not isinstance(raw, bool):
            raise StepMLError(f"{where}: {name} must be true or false, got {raw!r}")
        return raw
    if isinstance(raw, str):                       # YAML reads 20e9 as text
        try:
            raw = float(raw)
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise StepMLError(f"{where}: {name} must be a number, got {raw!r}")
    if kind == "int":
        if raw != int(raw):
            raise StepMLError(f"{where}: {name} must be a whole number, got {raw!r}")
        raw = int(raw)
        low = 0 if name == "long_prefill_token_threshold" else 1
        if raw < low:
            raise StepMLError(f"{where}: {name} must be >= {low}, got {raw}")
        return raw
    if name == "gpu_memory_utilization" and not 0 < raw <= 1:
        raise StepMLError(f"{where}: gpu_memory_utilization must be in (0, 1], got {raw!r}")
    if not raw > 0:
        raise StepMLError(f"{where}: {name} must be > 0, got {raw!r}")
    return float(raw)


def _checked(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    import difflib

    out: dict[str, Any] = {}
    for key, raw in doc.items():
        norm = str(key).strip().lower().replace("-", "_")
        name = _ALIASES.get(norm)
        if name is None:
            close = difflib.get_close_matches(norm, list(_ALIASES), n=2, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise StepMLError(f"{where}: unknown setting '{key}'{hint}; valid: {', '.join(SETTINGS)}")
        if name in out:
            raise StepMLError(f"{where}: {name} is given twice ('{key}')")
        out[name] = _value(name, raw, where)
    return out


def load_server_file(path: str | Path, roots: Sequence[Path] = ()) -> ServerSpec:
    """Read a ``--server`` YAML file (module docstring); every problem is one :class:`StepMLError` line."""
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"server file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: malformed YAML ({exc})") from None
    if not isinstance(doc, Mapping):
        raise StepMLError(f"{path}: expected a mapping of vLLM settings (model: ..., max_num_seqs: ...)")
    settings = _checked(doc, str(path))
    return server_from_settings(settings, {k: "server file" for k in settings}, [path.parent.resolve(), *roots],
                                str(path), base=path.parent)


def server_from_settings(settings: Mapping[str, Any], sources: Mapping[str, str], roots: Sequence[Path],
                         where: str, base: Path | None = None) -> ServerSpec:
    """A :class:`ServerSpec` from checked settings, every missing one at vLLM's default (module docstring)."""
    if "model" not in settings:
        raise StepMLError(f"{where}: no model (give model: NAME or the path of its config.json)")
    sources = dict(sources)
    values = dict(settings)
    config = find_model_config_path(values["model"], roots, base)
    arch = load_model_config(config)
    hw_name = values.get("hardware", DEFAULT_HARDWARE)
    sheet = find_hardware(hw_name, list(roots))
    hw = load_hardware(sheet)
    values["hardware"] = sheet.stem
    sources.setdefault("hardware", "the project's default; not a vLLM setting")

    def default(name: str, value: Any, why: str = "vLLM default") -> None:
        if name not in values:
            values[name] = value
            sources[name] = why

    default("tensor_parallel_size", 1)
    length, note = _max_len_of(config)
    if "max_model_len" not in values:
        if length is None:
            raise StepMLError(f"{where}: no max_model_len and {config} states no context length "
                              f"({', '.join(LENGTH_KEYS[:2])}, ...); give max_model_len")
        default("max_model_len", length, note)
    default("block_size", 16)
    default("enable_prefix_caching", True)
    default("enable_chunked_prefill", True)
    large = hw.memory_bytes / 1e9 >= LARGE_GPU_GIB and "a100" not in sheet.stem.lower()
    gpu = f"vLLM default for {'a' if large else 'an A100 or a'} GPU {'of' if large else 'under'} {LARGE_GPU_GIB} GiB"
    tokens = 8192 if large else 2048
    if not values["enable_chunked_prefill"]:
        tokens = max(tokens, values["max_model_len"])
    default("max_num_batched_tokens", tokens, gpu)
    default("max_num_seqs", min(1024 if large else 256, values["max_num_batched_tokens"]), gpu)
    default("gpu_memory_utilization", 0.9)
    default("long_prefill_token_threshold", 0)
    known = {f.name for f in fields(ServerSpec)}
    spec = ServerSpec(model_config=config, arch=arch, hw=hw, source=where, sources=sources,
                      **{k: v for k, v in values.items() if k in known})
    spec.scheduler_config()                          # the settings must make a valid scheduler
    return spec


def server_from_exp_config(path: str | Path, roots: Sequence[Path], experiment_id: str | None = None) -> ServerSpec:
    """The server of an ``exp-config.yaml`` (as :func:`features.metadata.load_server_config` reads it).

    Its ``max_num_seqs`` / ``max_num_batched_tokens`` / ``max_model_len`` (with that
    reader's defaults 128 / 2048 / 4096), the model's config, ``h100-sxm``, block size
    16, chunked prefill and prefix caching on; the KV pool measured in the step data
    for ``experiment_id`` when there is one, else the estimate
    (:func:`evaluation.replay_setup.kv_blocks_for`).
    """
    from evaluation.replay_setup import kv_blocks_for

    path = Path(path)
    server = load_server_config(path)
    if not server.model_id:
        raise StepMLError(f"{path}: no model")
    settings = {"model": server.model_id, "tensor_parallel_size": server.tp, "max_num_seqs": server.max_num_seqs,
                "max_num_batched_tokens": server.max_num_batched_tokens, "max_model_len": server.max_model_len}
    spec = server_from_settings(settings, {k: path.name for k in settings}, roots, str(path), base=path.parent)
    blocks, source = kv_blocks_for(spec.meta(experiment_id or path.parent.name), list(roots))
    if blocks is not None and source.startswith("step data"):
        spec = replace(spec, num_gpu_blocks_override=blocks,
                       sources={**spec.sources, "num_gpu_blocks_override": source})
    return spec
