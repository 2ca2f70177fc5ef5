"""Experiment metadata: directory names, vLLM server config, model architecture, hardware.

Experiments are folders named ``YYYYMMDD-HHMMSS-<model>-tp<N>-<workload>``
(the model name contains hyphens) holding ``exp-config.yaml`` (vLLM server
parameters) and ``profile.yaml`` (the inference-perf workload). Model
architectures come from Hugging Face ``config.json`` files and hardware from
datasheet JSON files.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from features.errors import StepMLError

EXPERIMENT_NAME = re.compile(r"^(?P<stamp>\d{8}-\d{6})-(?P<model>.+)-tp(?P<tp>\d+)-(?P<workload>[A-Za-z0-9_]+)$")
DEFAULT_HARDWARE = "h100-sxm"

#: Bytes per parameter by HF ``torch_dtype``.
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float8": 1, "fp8": 1, "int8": 1}


def default_data_root() -> Path:
    """``$STEPML_DATA`` if set, else ``../shared/data`` beside the project root."""
    env = os.environ.get("STEPML_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def default_blis_root() -> Path:
    """The BLIS simulator snapshot: ``$STEPML_BLIS`` if set, else ``blis`` beside the data root (``../shared/blis``).

    Its ``src/model_configs/`` holds Hugging Face ``config.json`` files of the
    models BLIS knows, searched by :func:`evaluation.server_spec.find_model_config_path`.
    """
    env = os.environ.get("STEPML_BLIS")
    if env:
        return Path(env)
    return default_data_root().parent / "blis"


@dataclass(frozen=True)
class ExperimentName:
    """The parts of an experiment directory name."""

    experiment_id: str
    stamp: str
    model: str
    tp: int
    workload: str


def parse_experiment_name(name: str) -> ExperimentName | None:
    """Split ``YYYYMMDD-HHMMSS-<model>-tp<N>-<workload>``; ``None`` if it does not match."""
    match = EXPERIMENT_NAME.match(name)
    if not match:
        return None
    return ExperimentName(name, match["stamp"], match["model"], int(match["tp"]), match["workload"])


@dataclass(frozen=True)
class ModelArch:
    """Transformer architecture numbers from a Hugging Face ``config.json``.

    Dense models have ``num_experts = 1`` and ``experts_per_token = 1``.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 1
    experts_per_token: int = 1
    bytes_per_param: int = 2
    tie_word_embeddings: bool = False

    @property
    def is_moe(self) -> bool:
        """True when the MLP is a mixture of experts."""
        return self.num_experts > 1

    @property
    def attention_params(self) -> int:
        """Attention weights of one layer (q, k, v, o projections)."""
        kv = self.num_kv_heads * self.head_dim
        return self.hidden_size * self.num_heads * self.head_dim * 2 + self.hidden_size * kv * 2

    @property
    def expert_params(self) -> int:
        """Weights of one gated MLP (expert) of one layer."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus LM head (once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def total_params(self) -> int:
        """All weights (router included for MoE)."""
        router = self.hidden_size * self.num_experts if self.is_moe else 0
        per_layer = self.attention_params + self.num_experts * self.expert_params + router + 2 * self.hidden_size
        return self.num_layers * per_layer + self.embedding_params

    @property
    def active_params(self) -> int:
        """Weights one token touches (``experts_per_token`` experts per layer)."""
        router = self.hidden_size * self.num_experts if self.is_moe else 0
        per_layer = (self.attention_params + self.experts_per_token * self.expert_params + router
                     + 2 * self.hidden_size)
        return self.num_layers * per_layer + self.embedding_params


def model_arch_from_config(config: dict[str, Any], name: str = "") -> ModelArch:
    """Build a :class:`ModelArch` from a parsed HF config dict."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return ModelArch(
            name=name or str(config.get("_name_or_path", "")),
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            num_experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
            experts_per_token=int(config.get("num_experts_per_tok") or 1),
            bytes_per_param=DTYPE_BYTES.get(str(config.get("torch_dtype", "bfloat16")), 2),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as exc:
        raise StepMLError(f"model config {name or '?'} lacks key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
        raise StepMLError(f"model config {name or '?'} has a bad value ({exc})") from None


def load_model_config(path: str | Path) -> ModelArch:
    """Read a HF ``config.json`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise StepMLError(f"model config not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StepMLError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(config, dict):
        raise StepMLError(f"{path}: expected a JSON object")
    return model_arch_from_config(config, path.parent.name)


@dataclass(frozen=True)
class Hardware:
    """Accelerator datasheet numbers in SI units (dense bf16 FLOP/s, bytes/s)."""

    name: str
    dense_bf16_flops: float
    hbm_bytes_per_s: float
    interconnect_bytes_per_s: float
    memory_bytes: float


def load_hardware(path: str | Path) -> Hardware:
    """Read a datasheet JSON (see ``features/hardware/`` for the layout).

    A tensor figure marked ``with_sparsity`` is halved to dense. The
    interconnect is NVLink (``interconnect.nvlink_bandwidth_gb_s``); a part
    without NVLink (``null`` or absent) uses ``pcie_bandwidth_gb_s``. Every
    figure must be a positive number.
    """
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"hardware datasheet not found: {path}")
    try:
        sheet = json.loads(path.read_text(encoding="utf-8"))
        compute = sheet["compute"]
        tflops = _positive(compute["bf16_tensor_core"], "compute.bf16_tensor_core")
        sparse = compute.get("with_sparsity", False)
        if not isinstance(sparse, bool):
            raise ValueError(f"compute.with_sparsity must be true or false, got {sparse!r}")
        if sparse:
            tflops /= 2.0
        link = sheet["interconnect"]
        nvlink = link.get("nvlink_bandwidth_gb_s")
        if nvlink is None:
            nvlink = link["pcie_bandwidth_gb_s"]
        return Hardware(
            name=str(sheet.get("name", path.stem)),
            dense_bf16_flops=_scaled(tflops, 12),
            hbm_bytes_per_s=_scaled(_positive(sheet["memory"]["bandwidth_tb_s"], "memory.bandwidth_tb_s"), 12),
            interconnect_bytes_per_s=_scaled(_positive(nvlink, "interconnect bandwidth"), 9),
            memory_bytes=_scaled(_positive(sheet["memory"]["capacity_gb"], "memory.capacity_gb"), 9),
        )
    except KeyError as exc:
        raise StepMLError(f"{path}: not a hardware datasheet (no {exc})") from None
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: not a hardware datasheet ({exc})") from None


def _scaled(value: float, power: int) -> float:
    """``value × 10**power`` rounded once, as the decimal figure reads (2.039 TB/s → 2039e9 B/s exactly)."""
    from decimal import Decimal

    return float(Decimal(repr(value)).scaleb(power))


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


#: Datasheets shipped with the project (vendor figures, with their sources inside each file).
HARDWARE_DIR = Path(__file__).resolve().parent / "hardware"


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t for t in re.split(r"[^a-z0-9]+", text.lower()) if t)


def _sheet_names(path: Path) -> tuple[tuple[str, ...], str]:
    """(the names a datasheet answers to, as token tuples; its family) -- the stem always."""
    names = [path.stem]
    family = ""
    try:
        sheet = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(sheet, dict):
            names += [a for a in sheet.get("aliases", []) if isinstance(a, str)]
            family = str(sheet.get("family", "")) if isinstance(sheet.get("family"), str) else ""
    except (OSError, ValueError):
        pass
    return tuple(_tokens(n) for n in names if _tokens(n)), family.lower()


def hardware_sheets(roots: list[Path] | None = None) -> dict[str, Path]:
    """Datasheet name (file stem) → path: the data's ``hardware/`` folders first, then the shipped ones."""
    folders = []
    for root in roots or []:
        for name in ("hardware", "blis/hardware"):
            if (root / name).is_dir():
                folders.append(root / name)
    folders.append(HARDWARE_DIR)
    found: dict[str, Path] = {}
    for folder in folders:
        for file in sorted(folder.glob("*.json")):
            found.setdefault(file.stem, file)
    return found


def _names_of(sheets: dict[str, Path]) -> dict[str, tuple[tuple[tuple[str, ...], ...], str]]:
    """Each sheet's names and family; a data sheet also answers to the shipped sheet's aliases of its stem."""
    out = {}
    for stem, path in sheets.items():
        names, family = _sheet_names(path)
        shipped = HARDWARE_DIR / f"{stem}.json"
        if shipped != path and shipped.is_file():
            more, fam = _sheet_names(shipped)
            names, family = names + more, family or fam
        out[stem] = (names, family)
    return out


def find_hardware(name: str, roots: list[Path] | None = None) -> Path:
    """The datasheet for a hardware name: a file stem (``a100-sxm-80gb``), an alias (``h100``) or a path.

    Matching ignores case and punctuation (``H100_SXM`` = ``h100-sxm``).

    Raises
    ------
    StepMLError
        For an unknown or ambiguous name, listing the known datasheets.
    """
    text = str(name).strip()
    if text.endswith(".json") and Path(text).is_file():
        return Path(text)
    sheets = hardware_sheets(roots)
    names = _names_of(sheets)
    wanted = _tokens(text)
    hits = [stem for stem, (aliases, _) in names.items() if wanted and wanted in aliases]
    if len(hits) == 1:
        return sheets[hits[0]]
    if not hits:
        family = [stem for stem, (_, fam) in names.items() if wanted and (fam,) == wanted]
        detail = (f"'{name}' names several datasheets ({', '.join(family)}); name one"
                  if family else f"no hardware datasheet named '{name}'")
        raise StepMLError(f"{detail}; known: {', '.join(sorted(sheets))} (or a datasheet .json path)")
    return sheets[hits[0]]


def hardware_in_path(path: str | Path, roots: list[Path] | None = None) -> tuple[str | None, list[str]]:
    """The datasheet a file path names, if any: ``(stem, [])``, ``(None, [candidates])`` when ambiguous.

    The folder or file names are searched, nearest the file first, for a
    datasheet's name or alias as whole tokens (``aiconfigurator_h100_vllm0.24``
    names ``h100`` = ``h100-sxm``); a bare family name (``a100``) that fits several
    datasheets gives the candidates.
    """
    names = _names_of(hardware_sheets(roots))
    for part in reversed(Path(path).parts):
        tokens = _tokens(part)

        def within(alias: tuple[str, ...]) -> bool:
            return any(tokens[i:i + len(alias)] == alias for i in range(len(tokens) - len(alias) + 1))

        best: dict[str, int] = {}
        for stem, (aliases, _) in names.items():
            lengths = [len(a) for a in aliases if within(a)]
            if lengths:
                best[stem] = max(lengths)
        if best:
            top = max(best.values())
            winners = sorted(s for s, n in best.items() if n == top)
            return (winners[0], []) if len(winners) == 1 else (None, winners)
        family = sorted(stem for stem, (_, fam) in names.items() if fam and within((fam,)))
        if family:
            return (family[0], []) if len(family) == 1 else (None, family)
    return None, []


@dataclass(frozen=True)
class ServerConfig:
    """vLLM server parameters from ``exp-config.yaml``."""

    model_id: str = ""
    tp: int = 1
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def load_server_config(path: str | Path) -> ServerConfig:
    """Read ``exp-config.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"experiment config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StepMLError(f"{path}: malformed YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise StepMLError(f"{path}: expected a mapping")
    try:
        return ServerConfig(
            model_id=str(raw.get("model", "")),
            tp=int(raw.get("tensor_parallelism", raw.get("tensor_parallel_size", 1))),
            max_num_seqs=int(raw.get("max_num_seqs", 128)),
            max_num_batched_tokens=int(raw.get("max_num_batched_tokens", 2048)),
            max_model_len=int(raw.get("max_model_len", 4096)),
            raw=raw,
        )
    except (TypeError, ValueError) as exc:
        raise StepMLError(f"{path}: bad value ({exc})") from None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_model_config(model: str, configs_dir: Path) -> Path | None:
    """Find the ``config.json`` folder for a model id or short name.

    Tries the basename of a HF id (``meta-llama/Llama-2-70b-hf``) first, then the
    folder whose normalised name starts with the normalised short name
    (``codellama-34b`` → ``CodeLlama-34b-Instruct-hf``), shortest first.
    """
    if not configs_dir.is_dir():
        return None
    folders = sorted(p for p in configs_dir.iterdir() if (p / "config.json").is_file())
    base = model.rsplit("/", 1)[-1]
    for folder in folders:
        if folder.name == base:
            return folder
    key = _norm(base)
    if not key:
        return None
    matches = [f for f in folders if _norm(f.name).startswith(key) or key.startswith(_norm(f.name))]
    return min(matches, key=lambda f: len(f.name)) if matches else None


@dataclass(frozen=True)
class ExperimentMeta:
    """Everything known about one experiment; fields are ``None`` when not found."""

    experiment_id: str
    model: str
    workload: str
    tp: int
    directory: Path | None = None
    server: ServerConfig | None = None
    arch: ModelArch | None = None
    hardware: Hardware | None = None


def find_experiment_dir(experiment_id: str, roots: list[Path]) -> Path | None:
    """Look for ``<id>``, ``experiments/<id>`` or ``blis/experiments/<id>`` under each root.

    A folder holding ``exp-config.yaml`` or ``profile.yaml`` wins over one that does
    not (a trace folder is also named after its experiment); else the first folder found.
    """
    found = [candidate
             for root in roots
             for candidate in (root / experiment_id, root / "experiments" / experiment_id,
                               root / "blis" / "experiments" / experiment_id)
             if candidate.is_dir()]
    for candidate in found:
        if (candidate / "exp-config.yaml").is_file() or (candidate / "profile.yaml").is_file():
            return candidate
    return found[0] if found else None


def metadata_roots(data_path: str | Path | None) -> list[Path]:
    """Folders to search for metadata: the data path's ancestors, then the default data root."""
    roots: list[Path] = []
    if data_path is not None:
        path = Path(data_path).resolve()
        roots.extend([path] + list(path.parents)[:4])
    roots.append(default_data_root())
    return roots


def _first_dir(roots: list[Path], *names: str) -> Path | None:
    for root in roots:
        for name in names:
            if (root / name).is_dir():
                return root / name
    return None


def experiment_meta(experiment_id: str, roots: list[Path], model: str | None = None,
                    workload: str | None = None, tp: int | None = None,
                    hardware: str | None = None) -> ExperimentMeta:
    """Collect an experiment's metadata from its name and whatever files the roots hold.

    ``hardware`` names the datasheet (a ``hardware`` column of the data): it is
    looked up in the data's ``hardware/`` folders, then among the shipped
    datasheets, and an unknown name is an error. Without it the experiment is
    taken to run on :data:`DEFAULT_HARDWARE` when the data's folders hold that
    datasheet, as the BLIS data does; otherwise no ``hw.*`` columns are joined.
    """
    parsed = parse_experiment_name(experiment_id)
    model = model or (parsed.model if parsed else experiment_id)
    workload = workload or (parsed.workload if parsed else "")
    tp = int(tp if tp is not None else (parsed.tp if parsed else 1))
    directory = find_experiment_dir(experiment_id, roots)
    server = None
    if directory is not None and (directory / "exp-config.yaml").is_file():
        server = load_server_config(directory / "exp-config.yaml")
    configs_dir = _first_dir(roots, "model_configs", "blis/model_configs")
    arch = None
    if configs_dir is not None:
        folder = find_model_config(server.model_id if server and server.model_id else model, configs_dir)
        if folder is None and server is not None:
            folder = find_model_config(model, configs_dir)
        if folder is not None:
            arch = load_model_config(folder)
    hw = None
    if hardware is not None:
        hw = load_hardware(find_hardware(hardware, roots))
    else:
        hw_dir = _first_dir(roots, "hardware", "blis/hardware")
        if hw_dir is not None and (hw_dir / f"{DEFAULT_HARDWARE}.json").is_file():
            hw = load_hardware(hw_dir / f"{DEFAULT_HARDWARE}.json")
    return ExperimentMeta(experiment_id, model, workload, tp, directory, server, arch, hw)


def arch_columns(arch: ModelArch | None, hardware: Hardware | None, tp: int, ep: int = 1) -> dict[str, float]:
    """The ``arch.*`` and ``hw.*`` columns of an experiment (empty parts when unknown)."""
    cols: dict[str, float] = {"arch.tp": float(tp), "arch.ep": float(ep)}
    if arch is not None:
        cols.update({
            "arch.num_layers": arch.num_layers,
            "arch.hidden_size": arch.hidden_size,
            "arch.num_heads": arch.num_heads,
            "arch.num_kv_heads": arch.num_kv_heads,
            "arch.head_dim": arch.head_dim,
            "arch.intermediate_size": arch.intermediate_size,
            "arch.vocab_size": arch.vocab_size,
            "arch.num_experts": arch.num_experts,
            "arch.experts_per_token": arch.experts_per_token,
            "arch.bytes_per_param": arch.bytes_per_param,
            "arch.total_params": arch.total_params,
            "arch.active_params": arch.active_params,
            "arch.attention_params": arch.attention_params,
            "arch.expert_params": arch.expert_params,
        })
    if hardware is not None:
        cols.update({
            "hw.flops": hardware.dense_bf16_flops,
            "hw.hbm_bw": hardware.hbm_bytes_per_s,
            "hw.interconnect_bw": hardware.interconnect_bytes_per_s,
        })
    return {k: float(v) for k, v in cols.items()}
