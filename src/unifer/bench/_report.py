"""Reports of a benchmark :class:`~unifer.bench.Result`: terminal table, JSON, CSV, Markdown, PNG.

``write_report(result, out_dir)`` writes ``results.json`` (every record, schema in docs/bench.md),
``results.csv`` (one flat row per configuration), ``report.md`` (one table per backend in the
classic layout, threads | average latency | memory, then the details) and, when matplotlib is
installed (``pip install "unifer[plot]"``), ``latency_vs_threads.png``, ``latency_bars.png`` and
``memory_bars.png``. Nothing here measures anything; it only formats what the workers measured.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from ._grid import split_target
from ._run import Result

PLOTS: Final = ("latency_vs_threads.png", "latency_bars.png", "memory_bars.png")
PLOT_INSTALL: Final = 'pip install "unifer[plot]"'


# -- small formatting helpers ----------------------------------------------------------------------


def _get(record: dict[str, Any], *keys: str) -> Any:
    value: Any = record
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: Any) -> str:
    """Milliseconds with about three significant digits."""
    if not isinstance(value, (int, float)):
        return "-"
    return _num(value, 1 if value >= 10 else 2 if value >= 1 else 3)


def threads_text(record: dict[str, Any]) -> str:
    """``"2"``, or ``"default (2)"`` with the count the runtime really used when it reports it,
    or ``"4 (applied 2)"`` where the runtime used another count than the one asked for."""
    applied = _get(record, "settings", "threads")
    known = isinstance(applied, int) and applied > 0
    if record["threads"] is not None:
        differs = known and applied != record["threads"]
        return f"{record['threads']} (applied {applied})" if differs else str(record["threads"])
    return f"default ({applied})" if known else "default"


def _other_load(record: dict[str, Any]) -> str:
    """Other processes' share of the CPUs while the record was timed, e.g. ``"3%"``."""
    background = record.get("background") or {}
    if not background.get("available"):
        return "-"
    text = f"{background['other_cpu']:.0%}"
    if background.get("steal", 0) >= 0.01:
        text += f" (+{background['steal']:.0%} steal)"
    return text + (" !" if background.get("disturbed") else "")


def disturbed(result: Result) -> list[dict[str, Any]]:
    """The records timed while other processes used much of the machine (see _background)."""
    return [r for r in result.ok_records() if _get(r, "background", "disturbed")]


def _integrity_text(record: dict[str, Any]) -> str:
    integrity = record.get("integrity")
    if not integrity:
        return "-"
    if integrity.get("ok") is None:
        return "n/a"
    return "yes" if integrity["ok"] else "NO"


def _headline(record: dict[str, Any]) -> dict[str, Any] | None:
    """End-to-end latency when measured (image models), else model-only."""
    latency = record.get("latency") or {}
    result: dict[str, Any] | None = latency.get("end_to_end") or latency.get("model_only")
    return result


def _end_to_end(result: Result) -> bool:
    """Whether the end-to-end path is timed: a model with preprocessing (the built-in ones, or a
    file with a sidecar), even where every configuration failed. Without it every headline
    figure is inference alone."""
    return result.model.get("preprocess") is not None or any(
        _get(r, "latency", "end_to_end") for r in result.records
    )


def _headline_name(result: Result) -> str:
    return "end-to-end" if _end_to_end(result) else "inference-only"


def _fed(result: Result) -> tuple[str, str | None] | None:
    """What the model was fed at each batch size (seeded feeds, or the preprocessed images),
    and a warning when dynamic dimensions were left at 1 for want of a --dim."""
    per_batch = {r["batch"]: r for r in result.ok_records() if r.get("inputs")}
    if not per_batch:
        return None
    fed = next(iter(per_batch.values()))["inputs"]
    shapes = "; ".join(
        ", ".join(f"{name} {shape}" for name, shape in r["inputs"]["shapes"].items())
        + f" (batch {batch})"
        for batch, r in sorted(per_batch.items())
    )
    warning = (
        f"dynamic dimension(s) fed as 1: {', '.join(fed['defaulted_dims'])}; give a named one "
        "its real size with --dim NAME=SIZE (bench.run(dims=...)), or the figures describe a "
        "size-1 input"
        if fed["defaulted_dims"]
        else None
    )
    return shapes, warning


def _warnings(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each backend's distinct warnings (unifer's, from its workers), in order."""
    return list(dict.fromkeys((r["backend"], m) for r in records for m in r.get("warnings") or ()))


def _variants(records: Sequence[dict[str, Any]]) -> bool:
    """Whether the records differ in precision or batch (then tables show those columns)."""
    return len({(r["precision"], r["batch"]) for r in records}) > 1


def _by_backend(result: Result) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in result.records:
        groups.setdefault(record["backend"], []).append(record)
    return groups


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(map(_cell, row)) + " |" for row in rows)
    return lines


def _cell(text: str) -> str:
    """``text`` on one markdown line: an error message's newlines (a converter's multi-line
    reason) would end a table row or a list item, and a ``|`` would split a cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _variant_cells(record: dict[str, Any], show: bool) -> list[str]:
    return [record["precision"], str(record["batch"])] if show else []


def _configuration(record: dict[str, Any], show: bool) -> str:
    """``"alpha threads=1"``, plus precision and batch when ``show`` (the run had several)."""
    text = f"{record['backend']} threads={record['threads_label']}"
    return f"{text} {record['precision']} batch={record['batch']}" if show else text


# -- terminal --------------------------------------------------------------------------------------


def format_table(result: Result) -> str:
    """The terminal summary: one line per configuration, aligned."""
    header = (
        "backend",
        "version",
        "threads",
        "prec",
        "batch",
        "mean ms",
        "median",
        "p90",
        "model ms",
        "samples/s",
        "peak MiB",
        "cpu cores",
        "cold s",
        "warm s",
        "integrity",
    )
    rows: list[tuple[str, ...]] = []
    errors: list[str] = []
    show = _variants(result.records)
    for record in result.records:
        configuration = (
            record["backend"],
            record.get("runtime_version") or "-",
            threads_text(record),
            record["precision"],
            str(record["batch"]),
        )
        if record["status"] != "ok":
            blank = len(header) - len(configuration) - 1
            rows.append((*configuration, "failed", *("",) * blank))
            errors.append(f"{_configuration(record, show)}: {record['error']}")
            continue
        head = _headline(record) or {}
        rows.append(
            (
                *configuration,
                _ms(head.get("mean_ms")),
                _ms(head.get("median_ms")),
                _ms(head.get("p90_ms")),
                _ms(_get(record, "latency", "model_only", "median_ms")),
                _num(_get(record, "throughput", "samples_per_s")),
                _num(_get(record, "memory", "peak_rss_mib"), 0),
                _num(_get(record, "background", "own_cpu_cores"), 1),
                _num(_get(record, "load", "cold_s"), 2),
                _num(_get(record, "load", "warm_s"), 2),
                _integrity_text(record),
            )
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    numeric = set(range(header.index("mean ms"), header.index("integrity")))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    model = result.model.get("spec", "?")
    ref = result.reference.get("backend")
    latency = (
        "end-to-end (uint8 RGB -> preprocessing -> inference -> output)"
        if _end_to_end(result)
        else "inference only (no preprocessing: seeded feeds as the model takes them)"
    )
    out.append("")
    out.append(
        f"{model}; latency = {latency}, "
        f"'model ms' = inference only (median); 'samples/s' = batch x 1000 / mean; "
        f"'cpu cores' = CPU kept busy while timed; integrity vs {ref} fp32"
    )
    if (fed := _fed(result)) is not None:
        out.append(f"inputs fed: {fed[0]}")
        out.extend([f"note: {fed[1]}"] if fed[1] else [])
    out.extend(f"warning ({backend}): {message}" for backend, message in _warnings(result.records))
    for name, reason in result.skipped.items():
        out.append(f"skipped {name}: {reason}")
    for r in disturbed(result):
        out.append(
            f"disturbed: {_configuration(r, show)}: other processes used "
            f"{_other_load(r).removesuffix(' !')} of the CPUs while it was timed; its figures are "
            "not representative, run it again"
        )
    out.extend(f"FAILED {e}" for e in errors)
    return "\n".join(out)


# -- JSON and CSV ----------------------------------------------------------------------------------


def to_json(result: Result) -> str:
    return json.dumps(result.to_dict(), indent=2, default=_json_default) + "\n"


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


CSV_COLUMNS: Final[tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]] = (
    ("backend", lambda r: r["backend"]),
    ("runtime_version", lambda r: r.get("runtime_version")),
    ("threads", lambda r: r["threads_label"]),
    ("applied_threads", lambda r: _get(r, "settings", "threads")),
    ("batch", lambda r: r["batch"]),
    ("precision", lambda r: r["precision"]),
    ("status", lambda r: r["status"]),
    *(
        (f"e2e_{k}", (lambda key: lambda r: _get(r, "latency", "end_to_end", key))(k))
        for k in ("n", "mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "stdev_ms")
    ),
    *(
        (f"model_{k}", (lambda key: lambda r: _get(r, "latency", "model_only", key))(k))
        for k in ("n", "mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "stdev_ms")
    ),
    ("preprocess_ms", lambda r: _get(r, "latency", "preprocess_ms")),
    ("other_cpu", lambda r: _get(r, "background", "other_cpu")),
    ("steal", lambda r: _get(r, "background", "steal")),
    ("own_cpu_cores", lambda r: _get(r, "background", "own_cpu_cores")),
    ("inferences_per_s", lambda r: _get(r, "throughput", "inferences_per_s")),
    ("samples_per_s", lambda r: _get(r, "throughput", "samples_per_s")),
    ("peak_rss_mib", lambda r: _get(r, "memory", "peak_rss_mib")),
    ("baseline_rss_mib", lambda r: _get(r, "memory", "baseline_rss_mib")),
    ("runtime_import_s", lambda r: _get(r, "load", "runtime_import_s")),
    ("conversion_s", lambda r: _get(r, "conversion", "seconds")),
    ("cold_load_s", lambda r: _get(r, "load", "cold_s")),
    ("warm_load_s", lambda r: _get(r, "load", "warm_s")),
    ("first_inference_ms", lambda r: _get(r, "load", "first_inference_ms")),
    ("integrity_ok", lambda r: _get(r, "integrity", "ok")),
    ("cosine_min", lambda r: _get(r, "integrity", "cosine_min")),
    ("max_abs_diff", lambda r: _get(r, "integrity", "max_abs_diff")),
    ("joules_per_inference", lambda r: _get(r, "energy", "joules_per_inference")),
    ("non_system_libraries", lambda r: len(_get(r, "dependencies", "non_system") or [])),
    ("error", lambda r: r.get("error")),
)


def to_csv(result: Result) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in CSV_COLUMNS])
    for record in result.records:
        writer.writerow(["" if (v := get(record)) is None else v for _, get in CSV_COLUMNS])
    return buffer.getvalue()


# -- Markdown --------------------------------------------------------------------------------------


def _machine_line(machine: dict[str, Any]) -> str:
    cpu = machine.get("cpu", {})
    isa = [
        name
        for name, on in (
            ("AVX-512", cpu.get("avx512")),
            ("VNNI", cpu.get("vnni")),
            ("BF16", cpu.get("bf16")),
            ("AMX", cpu.get("amx")),
        )
        if on
    ]
    memory = _get(machine, "memory", "total_bytes")
    gpus = machine.get("gpus") or []
    os_info = machine.get("os", {})
    parts = [
        f"{cpu.get('model') or cpu.get('arch')} ({', '.join(isa) or 'no AVX-512'})",
        f"{cpu.get('physical_cores')} physical / {cpu.get('logical_cores')} logical cores "
        f"({cpu.get('usable_cpus')} usable)",
        f"{memory / 2**30:.0f} GiB" if isinstance(memory, int) else "memory unknown",
        f"{os_info.get('distribution') or os_info.get('system')} (kernel {os_info.get('release')})",
        f"Python {_get(machine, 'python', 'version')}",
        "GPUs: " + (", ".join(str(g.get("name") or g.get("vendor")) for g in gpus) or "none"),
    ]
    return "; ".join(parts)


def markdown(result: Result, plots: Sequence[str] = ()) -> str:
    """``report.md``: context, a cross-backend summary, then one section per backend."""
    model = result.model
    settings = result.settings
    runtimes = _get(result.machine, "runtimes") or {}
    out = [f"# unifer bench: {model.get('spec')}", ""]
    if model.get("params"):
        out.append(
            f"**Model**: {model.get('description', model.get('name'))}; "
            f"{model['params'] / 1e6:.1f} M parameters, {model.get('gflops')} GFLOPs per image; "
            f"{model.get('input')} -> {model.get('output')}; "
            f"{model['size_bytes'] / 2**20:.0f} MiB, sha256 `{str(model.get('sha256'))[:16]}...`"
        )
    else:
        out.append(
            f"**Model**: `{model.get('path')}`, {model['size_bytes'] / 2**20:.1f} MiB, "
            f"sha256 `{str(model.get('sha256'))[:16]}...`"
        )
    out.append("")
    if (fed := _fed(result)) is not None:
        out.append(f"**Inputs fed**: {fed[0]}" + (f". **Note**: {fed[1]}" if fed[1] else ""))
        out.append("")
    out.append(f"**Machine**: {_machine_line(result.machine)}")
    out.append("")
    versions = {n: str(v.get("version")) for n, v in runtimes.items() if v.get("available")}
    elsewhere = settings.get("interpreters") or {}
    for record in result.records:  # backends measured in another environment: their own versions
        name = split_target(record["backend"])[0]
        if name in elsewhere and record.get("runtime_version"):
            versions[name] = f"{record['runtime_version']} (in {elsewhere[name]})"
    listed = ", ".join(f"{n} {v}" for n, v in versions.items())
    out.append(f"**Runtimes**: {listed or 'none'}; unifer {result.unifer_version}")
    out.append("")
    max_time = settings.get("max_time_s")
    out.append(
        f"**Method**: one fresh process per configuration; latency per call through "
        f"`unifer.Engine` after {settings['warmup']} discarded warm-up calls, until at least "
        f"{settings['min_runs']} calls and {settings['min_time_s']:g} s"
        + (f" (at most {max_time:g} s)" if max_time else "")
        + (f", or a median stable to {settings['stable']:.1%}" if settings.get("stable") else "")
        + f", in {settings['rounds']} rounds"
        + (
            " interleaving end-to-end and model-only. *End-to-end* = uint8 RGB image -> "
            "preprocessing -> inference -> output (`engine.predict`); *model-only* = prepared "
            "tensor -> inference (`engine.run`). "
            if _end_to_end(result)
            else ". No preprocessing is attached to this model (a file without a sidecar), so "
            "latency = seeded feeds as the model takes them -> inference (`engine.run`). "
        )
        + "Memory = peak RSS of the configuration's process. Integrity = outputs on "
        f"{settings['integrity_samples']} seeded inputs vs {result.reference.get('backend')} "
        f"{result.reference.get('runtime_version') or ''} fp32."
    )
    out.append("")
    if result.command:
        out.append(f"**Command**: `{result.command}`  ")
    out.append(
        f"**Run**: {result.created}, {_num(result.conditions.get('wall_s'), 0)} s; load average "
        f"before {_loadavg_text(result.conditions.get('loadavg_before'))}, after "
        f"{_loadavg_text(result.conditions.get('loadavg_after'))}"
    )
    out.append("")
    if result.skipped:
        out.append(
            "**Skipped backends**: " + "; ".join(f"{n}: {r}" for n, r in result.skipped.items())
        )
        out.append("")

    groups = _by_backend(result)
    out.extend(_summary(result, groups))
    noisy = disturbed(result)
    if noisy:
        out.append(
            "**Disturbed**: other processes used more than 10% of the CPUs while "
            + ", ".join(_configuration(r, _variants(result.records)) for r in noisy)
            + " ran (see 'other load' below); read those figures as upper bounds."
        )
        out.append("")
    for name in plots:
        out.append(f"![{name}]({name})")
    if plots:
        out.append("")
    for backend, records in groups.items():
        out.extend(_backend_section(backend, records, result))
    out.extend(_energy_section(result))
    return "\n".join(out).rstrip() + "\n"


def _loadavg_text(value: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else "-"


def _summary(result: Result, groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Threads down, backends across: the average headline latency, as in the classic plots."""
    show = _variants(result.records)
    keys = list(
        dict.fromkeys((r["precision"], r["batch"], r["threads_label"]) for r in result.records)
    )
    backends = list(groups)
    header = [*(["precision", "batch"] if show else []), "threads", *(f"{b} ms" for b in backends)]
    rows = []
    for precision, batch, label in keys:
        cells = [precision, str(batch)] if show else []
        cells.append(label)
        for backend in backends:
            match = next(
                (
                    r
                    for r in groups[backend]
                    if (r["precision"], r["batch"], r["threads_label"]) == (precision, batch, label)
                ),
                None,
            )
            if match is None:
                cells.append("")
            elif match["status"] != "ok":
                cells.append("failed")
            else:
                cells.append(_ms((_headline(match) or {}).get("mean_ms")))
        rows.append(cells)
    return [f"## Average {_headline_name(result)} latency (ms)", "", *_table(header, rows), ""]


def _device(backend: str, ok: list[dict[str, Any]], result: Result) -> list[str]:
    """Where it ran and with which backend options, unless on the CPU with none."""
    options = (result.settings.get("backend_options") or {}).get(split_target(backend)[0])
    devices = sorted({str(d) for r in ok if (d := _get(r, "settings", "device")) is not None})
    if not options and devices in ([], ["cpu"]):
        return []
    line = f"Ran on {', '.join(devices) or 'an unreported device'}"
    if options:
        line += ", with backend options " + ", ".join(f"{k}={v!r}" for k, v in options.items())
    return [line + ".", ""]


def _backend_section(backend: str, records: list[dict[str, Any]], result: Result) -> list[str]:
    show = _variants(records)
    version = next((r["runtime_version"] for r in records if r.get("runtime_version")), None)
    out = [f"## {backend} {version or ''}".rstrip(), ""]
    ok = [r for r in records if r["status"] == "ok"]
    variant_header = ["precision", "batch"] if show else []

    out.extend(
        _table(
            [*variant_header, "threads", "average latency (ms)", "memory (MiB)"],
            (
                [
                    *_variant_cells(r, show),
                    threads_text(r),
                    _ms((_headline(r) or {}).get("mean_ms")) if r["status"] == "ok" else "failed",
                    _num(_get(r, "memory", "peak_rss_mib"), 0),
                ]
                for r in records
            ),
        )
    )
    out.append("")
    out.extend(_device(backend, ok, result))
    warned = [message for _, message in _warnings(records)]
    if warned:
        out.extend([*(f"- warning: {_cell(m)}" for m in warned), ""])
    out.extend(_conversion(records))
    for r in records:
        if r["status"] != "ok":
            where = f"threads={r['threads_label']} {r['precision']} batch={r['batch']}"
            out.append(f"- {where} failed: {_cell(r['error'])}")
    if any(r["status"] != "ok" for r in records):
        out.append("")
    if not ok:
        return out

    end_to_end = _end_to_end(result)
    path = "end_to_end" if end_to_end else "model_only"
    out.append(
        f"Latency (ms): {_headline_name(result)}, its median in each round, the share of the CPUs "
        "other processes used while it was timed ('!' above 10%: disturbed, not "
        "representative)" + (", and model-only (inference alone) beside it." if end_to_end else ".")
    )
    out.append("")
    beside = ["model-only mean", "model-only median", "preprocessing"] if end_to_end else []
    out.extend(
        _table(
            [
                *variant_header,
                "threads",
                "mean",
                "median",
                "p90",
                "p99",
                "min",
                "stdev",
                "n",
                "round medians",
                "other load",
                *beside,
            ],
            (
                [
                    *_variant_cells(r, show),
                    threads_text(r),
                    *(
                        _ms(_get(r, "latency", path, k))
                        for k in ("mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "stdev_ms")
                    ),
                    str(_get(r, "latency", path, "n") or "-"),
                    " / ".join(_ms(m) for m in _get(r, "latency", path, "round_medians_ms") or [])
                    or "-",
                    _other_load(r),
                    *(
                        [
                            _ms(_get(r, "latency", "model_only", "mean_ms")),
                            _ms(_get(r, "latency", "model_only", "median_ms")),
                            _ms(_get(r, "latency", "preprocess_ms")),
                        ]
                        if end_to_end
                        else []
                    ),
                ]
                for r in ok
            ),
        )
    )
    out.append("")
    out.append(
        "Load, throughput and memory; CPU cores busy = the process's own CPU time while it was "
        "timed, over the wall time (about the thread count on the CPU, less on a GPU)."
    )
    out.append("")
    out.extend(
        _table(
            [
                *variant_header,
                "threads",
                "runtime import s",
                "cold load s",
                "warm load s",
                "first inference ms",
                "inferences/s",
                "samples/s",
                "RSS before load MiB",
                "peak RSS MiB",
                "CPU cores busy",
            ],
            (
                [
                    *_variant_cells(r, show),
                    threads_text(r),
                    _num(_get(r, "load", "runtime_import_s"), 2),
                    _num(_get(r, "load", "cold_s"), 2),
                    _num(_get(r, "load", "warm_s"), 2)
                    + (" (cache)" if _get(r, "load", "warm_loaded_from_cache") else ""),
                    _ms(_get(r, "load", "first_inference_ms")),
                    _num(_get(r, "throughput", "inferences_per_s"), 2),
                    _num(_get(r, "throughput", "samples_per_s"), 2),
                    _num(_get(r, "memory", "baseline_rss_mib"), 0),
                    _num(_get(r, "memory", "peak_rss_mib"), 0),
                    _num(_get(r, "background", "own_cpu_cores"), 2),
                ]
                for r in ok
            ),
        )
    )
    out.append("")
    ref = result.reference
    tolerances = result.settings.get("integrity_tolerances", {})
    out.append(
        f"Output integrity vs {ref.get('backend')} fp32 (yes = min cosine >= tolerance and "
        "every output's max abs diff <= rtol x max|that output's reference|; "
        + "; ".join(
            f"{p}: cos >= {t['cosine']}, rtol {t['rtol']:g}"
            for p, t in tolerances.items()
            if p in {r["precision"] for r in ok}
        )
        + ")."
    )
    out.append("")
    out.extend(
        _table(
            [
                *variant_header,
                "threads",
                "maintains output integrity",
                "min cosine",
                "max abs diff",
            ],
            (
                [
                    *_variant_cells(r, show),
                    threads_text(r),
                    _integrity_text(r)
                    + (
                        f" ({_get(r, 'integrity', 'problem')})"
                        if _get(r, "integrity", "problem")
                        else ""
                    ),
                    _num(_get(r, "integrity", "cosine_min"), 7),
                    _sci(_get(r, "integrity", "max_abs_diff")),
                ]
                for r in ok
            ),
        )
    )
    out.append("")
    out.extend(_dependencies(ok))
    return out


def _conversion(records: list[dict[str, Any]]) -> list[str]:
    """One line on how the model was converted for this backend, when it was."""
    conversion = next((r["conversion"] for r in records if r.get("conversion")), None)
    if not conversion or "error" in conversion:
        return []
    check = conversion.get("check") or {}
    passed = check.get("passed")
    verdict = (
        "not checked"
        if passed is None
        else "within fp32 tolerance"
        if passed
        else "OUTSIDE fp32 tolerance"
    )
    return [
        f"The model was converted for this backend first (`{conversion.get('converter')}`, "
        f"{_num(conversion.get('seconds'), 1)} s, in a process of its own; the loads below read "
        f"the converted file). Conversion check against {check.get('reference')}: cosine "
        f"{_num(check.get('min_cosine'), 7)}, max abs diff {_sci(check.get('max_abs_diff'))}, "
        f"{verdict}.",
        "",
    ]


def _sci(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, (int, float)) else "-"


def _dependencies(records: list[dict[str, Any]]) -> list[str]:
    libs: dict[str, dict[str, Any]] = {}
    for r in records:
        for lib in _get(r, "dependencies", "non_system") or []:
            libs.setdefault(lib["path"], lib)
    systems = {lib["name"] for r in records for lib in _get(r, "dependencies", "system") or []}
    stdlib = {lib["name"] for r in records for lib in _get(r, "dependencies", "python") or []}
    if not any(_get(r, "dependencies", "available") for r in records):
        reason = next((_get(r, "dependencies", "reason") for r in records), None)
        return [f"Runtime dependencies: not available ({reason}).", ""]
    total = sum(lib.get("size") or 0 for lib in libs.values())
    out = [
        f"Runtime dependencies: {len(libs)} non-system shared libraries loaded by this backend "
        f"({total / 2**20:.0f} MiB on disk)"
        + (f"; system libraries: {', '.join(sorted(systems))}" if systems else "")
        + (f"; {len(stdlib)} Python standard-library extension modules" if stdlib else "")
        + ".",
        "",
    ]
    if libs:
        out.extend(
            _table(
                ["library", "package", "size (MiB)"],
                (
                    [
                        f"`{lib['name']}`",
                        str(lib.get("package") or lib["kind"]),
                        _num((lib.get("size") or 0) / 2**20, 1),
                    ]
                    for lib in sorted(
                        libs.values(), key=lambda v: (str(v.get("package")), v["name"])
                    )
                ),
            )
        )
        out.append("")
    return out


def _energy_section(result: Result) -> list[str]:
    energy = result.energy
    if not energy.get("available"):
        return ["## Energy", "", f"Unavailable: {energy.get('reason')}.", ""]
    rows = [
        [
            r["backend"],
            threads_text(r),
            r["precision"],
            str(r["batch"]),
            _num(_get(r, "energy", "joules_per_inference"), 3),
            _num(_get(r, "energy", "average_watts"), 1),
        ]
        for r in result.ok_records()
    ]
    return [
        "## Energy",
        "",
        f"{energy.get('source')}; domains {', '.join(energy.get('domains', []))}.",
        "",
        *_table(["backend", "threads", "precision", "batch", "J / inference", "average W"], rows),
        "",
    ]


# -- plots -----------------------------------------------------------------------------------------


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Write the PNG plots; raises ImportError when matplotlib is missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = result.ok_records()
    series: dict[str, list[dict[str, Any]]] = {}
    show = _variants(result.records)
    for r in ok:
        name = r["backend"] + (f" {r['precision']} b{r['batch']}" if show else "")
        series.setdefault(name, []).append(r)
    labels = list(dict.fromkeys(r["threads_label"] for r in result.records))
    title = str(result.model.get("spec"))
    latency = f"average {_headline_name(result)} latency (ms)"
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps the legend below the axes
        written.append(path)

    def mean_ms(record: dict[str, Any]) -> float | None:
        value = (_headline(record) or {}).get("mean_ms")
        return float(value) if isinstance(value, (int, float)) else None

    def peak_mib(record: dict[str, Any]) -> float | None:
        value = _get(record, "memory", "peak_rss_mib")
        return float(value) if isinstance(value, (int, float)) else None

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, records in series.items():
        xs: list[float] = []
        ys: list[float] = []
        p90: list[float] = []
        for r in records:
            mean = mean_ms(r)
            if mean is not None:
                xs.append(labels.index(r["threads_label"]))
                ys.append(mean)
                p90.append(float((_headline(r) or {}).get("p90_ms", mean)))
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        ax.vlines(xs, ys, p90, colors=line.get_color(), alpha=0.4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("threads")
    ax.set_ylabel(f"{latency}; line to p90")
    ax.set_title(f"Latency vs threads: {title}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend(ax, len(series))
    save(fig, PLOTS[0])

    for filename, value_of, ylabel, heading in (
        (PLOTS[1], mean_ms, latency, "Latency"),
        (PLOTS[2], peak_mib, "peak RSS of the process (MiB)", "Memory"),
    ):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        width = 0.8 / max(len(series), 1)
        for i, (name, records) in enumerate(series.items()):
            xs, ys = [], []
            offset = (i - (len(series) - 1) / 2) * width
            for r in records:
                value = value_of(r)
                if value is not None:
                    xs.append(labels.index(r["threads_label"]) + offset)
                    ys.append(value)
            bars = ax.bar(xs, ys, width=width, label=name)
            # Sub-millisecond latencies keep their digits; hundreds of MiB need none.
            texts = [f"{v:.2f}" if v < 10 else f"{v:.0f}" for v in ys]
            ax.bar_label(bars, labels=texts, fontsize=7)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("threads")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{heading}: {title}")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.1)
        _legend(ax, len(series))
        save(fig, filename)
    return written


def _legend(ax: Any, entries: int) -> None:
    # Below the axes: inside, it hides bars and points whatever corner it takes.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=min(entries, 4), frameon=False)


def write_report(result: Result, out_dir: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Write every report file into ``out_dir`` (created if needed).

    Returns ``{"files": [paths], "plots": "written" | "<why not>"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    plot_status = "disabled"
    plot_names: list[str] = []
    if plots:
        try:
            written = plot(result, out)
        except ImportError:
            plot_status = f"matplotlib is not installed; for PNG plots: {PLOT_INSTALL}"
        else:
            plot_status = "written"
            plot_names = [p.name for p in written]
            files.extend(written)
    for name, text in (
        ("results.json", to_json(result)),
        ("results.csv", to_csv(result)),
        ("report.md", markdown(result, plot_names)),
    ):
        path = out / name
        path.write_text(text)
        files.append(path)
    return {"files": files, "plots": plot_status}


def read_results(path: str | Path) -> Result:
    """Read a ``results.json`` written by :func:`write_report`."""
    return Result.from_dict(json.loads(Path(path).read_text()))
