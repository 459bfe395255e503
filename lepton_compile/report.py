"""Reports: report.json (lepton-compile/report/v1), report.md, report.html, terminal table."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_compile import __version__, serving_report
from lepton_compile.markdown import table as markdown_table
from lepton_compile.serving import points_to_dict

if TYPE_CHECKING:
    from lepton_compile.variant import VariantResult

SCHEMA = "lepton-compile/report/v1"
# Minor versions extend v1 compatibly; 1: the serving profile (present with --batch-sizes).
SCHEMA_MINOR_SERVING = 1


def _variant_dict(v: VariantResult) -> dict[str, Any]:
    m = v.measurement.to_dict() if v.measurement else {}
    d: dict[str, Any] = {
        "id": v.id,
        "recipe": v.recipe.to_dict(),
        "backend": v.backend,
        "device": v.device,
        "backend_options": v.options or None,
        "precision": v.precision,
        "status": v.status,
        "latency_ms": m.get("latency_ms"),
        "energy_j": m.get("energy_j"),
        "accuracy": v.fidelity.to_dict() if v.fidelity else None,
        "size_bytes": v.size_bytes,
        "pareto": v.pareto,
        "artifact": f"variants/{v.artifact.name}" if v.artifact else None,
        "build": v.build,
        "session": v.session,
    }
    if "protocol" in m:
        d["measurement"] = m["protocol"]
    # Paired ratios to the original measured in the same trials (< 1: lower than the original).
    d["ratio_to_original"] = {q: r.to_dict() for q, r in v.ratios.items()} or None
    if v.screen is not None:
        d["screen"] = v.screen
    if v.race:
        d["race"] = v.race.get("race")
    if v.reason:
        d["reason"] = v.reason
    if v.cache:
        d["cache"] = v.cache
    if v.roofline:
        d["roofline"] = v.roofline
    if v.serving:
        d["serving"] = points_to_dict(v.serving)
    return d


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 4)


def build_report(
    *,
    loaded: Any,
    feeds: Any,
    variants: list[VariantResult],
    baseline: VariantResult,
    best: VariantResult,
    pick_reason: str,
    objective: str,
    meter: Any,
    protocol: Any,
    max_accuracy_drop: float,
    wall_s: float,
    constraints_met: bool,
    isolation: dict[str, Any] | None = None,
    device_at_start: dict[str, Any] | None = None,
    rules: Any = None,
    serving: dict[str, Any] | None = None,
) -> dict[str, Any]:
    providers = sorted({p for v in variants for p in v.session.get("providers", [])})
    meter_desc = meter.describe()
    notes = list(loaded.notes)
    if meter.name == "estimated":
        notes.append(
            "energy is estimated, not measured: "
            + str(meter_desc.get("summary") or meter_desc.get("formula") or meter_desc)
            + "; under such a model energy follows CPU time, so it ranks like latency"
        )
    b_lat = baseline.latency.mean if baseline.latency else None
    b_en = baseline.energy.mean if baseline.energy else None
    # One record per race (device, or memory group): whether the pick was decided, and why.
    decisions = list({v.race["race"]: v.race for v in variants if v.race}.values())
    rep: dict[str, Any] = {
        "schema": SCHEMA,
        "tool": {"name": "lepton-compile", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": loaded.to_dict(),
        "inputs": feeds.to_dict(),
        "device": _device(providers, device_at_start),
        "measurement": {
            "meter": meter_desc,
            "protocol": protocol.to_dict() if hasattr(protocol, "to_dict") else vars(protocol),
            "feed": "first held-out eval sample, same for every variant",
            "reference": "original model on onnxruntime CPU with graph optimizations disabled",
            "isolation": isolation or {},
            "selection": "variants are compared by their ratio trial by trial (paired "
            "log-ratios over the trials they shared, Student t 95% interval); one is picked "
            "only when its ratio to the original on the objective lies wholly below 1, and it "
            "is not slower or hungrier beyond noise",
            "racing": rules.to_dict() if rules is not None else None,
        },
        "decision": decisions,
        "objective": objective,
        "constraints": {
            "max_accuracy_drop": max_accuracy_drop,
            "accuracy_drop_definition": "max over outputs of 1 - cosine, and of 1 - top-1 "
            "agreement for score outputs, on the held-out eval inputs",
            "met": constraints_met,
        },
        "baseline": baseline.id,
        "best": {
            "id": best.id,
            "reason": pick_reason,
            "artifact": "best.onnx",
            "latency_speedup": _ratio(b_lat, best.latency.mean if best.latency else None),
            "energy_ratio": _ratio(best.energy.mean if best.energy else None, b_en),
            "ratio_to_original": {q: r.to_dict() for q, r in best.ratios.items()} or None,
            "decided": best.race.get("decided") if best.race else None,
        },
        "variants": [_variant_dict(v) for v in variants],
        "wall_s": round(wall_s, 2),
        "notes": notes,
    }
    if serving is not None:
        # Schema v1.1: v1 plus the serving profile (report["serving"], variant["serving"]).
        rep["schema_minor"] = SCHEMA_MINOR_SERVING
        rep["serving"] = serving
        rep["best"]["batch"] = (serving.get("recommendation") or {}).get("batch")
    return rep


def _device(providers: list[str], at_start: dict[str, Any] | None) -> dict[str, Any]:
    """The record at the end of the run, with what drifts (GPU clocks, temperature, power
    limit) also as it was at the start: a figure is comparable only within one record."""
    from lepton_compile.bench.device import device_record, record_key

    rec = device_record(providers or None)
    rec["key"] = record_key(rec)
    if at_start is not None:
        rec["at_start"] = {"gpus": at_start.get("gpus"), "cpu": at_start.get("cpu")}
        rec["key_changed_during_run"] = (
            record_key(dict(at_start, providers=rec.get("providers"))) != rec["key"]
        )
    return rec


def device_line(dev: dict[str, Any]) -> str:
    gpus = dev.get("gpus") or []
    if gpus:
        return ", ".join(str(g.get("name", "?")) for g in gpus)
    cpu = dev.get("cpu") or {}
    return f"{cpu.get('model', '?')} ({cpu.get('threads_available', '?')} threads)"


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, str):
        return x
    return fmt.format(x)


def _ratio_text(v: dict[str, Any], objective: str) -> str:
    """The paired ratio to the original on the objective's quantity: "0.68x [0.62, 0.74] n=7"."""
    if v.get("screen"):
        return f"{v['screen']['ratio']:.2f}x (screen)"
    ratios = v.get("ratio_to_original") or {}
    r = ratios.get("latency" if objective == "latency" else "energy") or ratios.get("latency")
    if not r or r.get("ratio") is None:
        return "—"
    lo, hi = r["ci95"]
    span = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "[—]"
    return f"{r['ratio']:.2f}x {span} n={r['n']}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """Table rows shared by the Markdown, HTML and terminal renderings."""
    out = []
    best = report["best"]["id"]
    for v in report["variants"]:
        lat = v.get("latency_ms") or {}
        en = v.get("energy_j") or {}
        acc = v.get("accuracy") or {}
        ci = lat.get("ci95")
        mean = lat.get("mean")
        lat_txt = "—" if mean is None else f"{mean:.3f} ± {_num(ci)}"
        e = en.get("per_inference")
        e_txt = "—" if e is None else f"{e * 1e3:.3f} ± {_num((en.get('ci95') or 0) * 1e3)}"
        if e is not None and en.get("method") == "estimated":
            e_txt += " (est.)"
        mark = " ★" if v["id"] == best else ""
        out.append(
            [
                v["id"] + mark,
                v["status"],
                _num(lat.get("p50")),
                lat_txt,
                _ratio_text(v, report.get("objective", "energy")),
                e_txt,
                _num(acc.get("drop"), "{:.4f}"),
                _num(acc.get("min_sqnr_db"), "{:.1f}"),
                f"{v['size_bytes'] / 1e6:.2f}" if v.get("size_bytes") else "—",
                "yes" if v.get("pareto") else "",
            ]
        )
    return out


HEADERS = [
    "variant",
    "status",
    "p50 ms",
    "mean ms ± ci95",
    "vs original [95% CI]",
    "mJ/inf ± ci95",
    "acc. drop",
    "SQNR dB",
    "MB",
    "Pareto",
]


def to_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    dev = report["device"]
    meter = report["measurement"]["meter"]
    lines = [
        f"## lepton-compile: {Path(m['path']).name}",
        "",
        f"- model sha256 `{m['sha256'][:16]}…`, opset {m['opset']}, "
        + ", ".join(f"`{i['name']}` {i['dtype']}{i['shape']}" for i in m["inputs"]),
        f"- device: {device_line(dev)} (record `{dev.get('key', '?')}`); meter: "
        f"{meter.get('summary') or meter.get('name', '?')}",
        f"- objective: **{report['objective']}**; best: **{report['best']['id']}** — "
        f"{report['best']['reason']}",
        "",
        *markdown_table(HEADERS, rows(report)),
    ]
    lines += serving_report.markdown(report)  # the batch table, when batch sizes were profiled
    kernels = [
        f"- `{v['id']}`: {v['session']['kernel_summary']}"
        for v in report["variants"]
        if (v.get("session") or {}).get("kernel_summary")
    ]
    if kernels:
        lines += ["", "Layers on our kernels (lepton backend, chosen per layer):", "", *kernels]
    failed = [v for v in report["variants"] if v.get("reason")]
    if failed:
        lines += ["", "Not picked because:", ""]
        lines += [f"- `{v['id']}` ({v['status']}): {v['reason']}" for v in failed]
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    lines += compression_markdown(report)
    for d in report.get("decision") or []:
        lines += [
            "",
            f"Measurement on {d['race']}: {d['trials']} interleaved trials in "
            f"{d['seconds']:.1f} s; {'decided' if d['decided'] else 'UNDECIDED'}: {d['reason']}",
        ]
    lines += [
        "",
        "Latency: wall time per inference in interleaved trials (order shuffled per trial); "
        "ci95 is the 95% confidence half-width of the mean over trial means. 'vs original' is "
        "the variant's ratio to the original on the objective (energy, else latency), paired "
        "trial by trial, with its 95% interval and the number of trials; below 1 is better. "
        "★ marks the pick.",
        "",
    ]
    return "\n".join(lines)


def compression_records(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recipe name -> its accuracy-search record (one per recipe, whatever the backend)."""
    out: dict[str, dict[str, Any]] = {}
    for v in report["variants"]:
        for step in (v.get("build") or {}).get("steps") or []:
            if step.get("layers") is not None and "kind" in step:
                out.setdefault(v["recipe"]["name"], step)
    return out


def compression_markdown(report: dict[str, Any], top: int = 12) -> list[str]:
    """Layer by layer: what each accuracy-aware recipe compressed, kept, and why."""
    lines: list[str] = []
    for recipe, rec in compression_records(report).items():
        kept = rec.get("layers_kept") or []
        lines += [
            "",
            f"### {recipe}: {rec['layers_compressed']} of {rec['layers_total']} layers "
            f"compressed ({rec['criterion']})",
            "",
            f"Drop with every layer compressed {rec['drop_all_compressed']:.4f}; final "
            f"{rec['drop_final']:.4f} (target {rec['target_drop']:.4f}); "
            f"{rec['evaluations']} evaluations in {rec['seconds']:.1f} s."
            + (f" {rec['note']}." if rec.get("note") else ""),
        ]
        layers = [x for x in rec["layers"] if "sensitivity" in x]
        if not layers:
            continue
        layers.sort(key=lambda x: -abs(x["sensitivity"]))
        lines += [
            "",
            "| layer | op | sensitivity | compressed |",
            "|---|---|---|---|",
        ]
        for x in layers[:top]:
            lines.append(
                f"| `{x['name']}` | {x['op_type']} | {x['sensitivity']:.4f} | "
                f"{'yes' if x['compressed'] else '**no**'} |"
            )
        rest = len(layers) - top
        if rest > 0:
            lines.append(f"| … {rest} more in report.json | | | |")
        if kept and len(kept) > top:
            lines.append(f"\nKept uncompressed: {', '.join(kept)}")
    return lines


def print_table(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"lepton-compile — objective: {report['objective']}", title_justify="left")
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("variant", "status") else "right")
    styles = {"ok": "", "rejected": "yellow", "failed": "red", "skipped": "dim"}
    for r in rows(report):
        t.add_row(*r, style=styles.get(r[1], ""))
    console.print(t)
    for v in report["variants"]:
        if v.get("reason"):
            console.print(f"[dim]{v['id']} {v['status']}: {v['reason']}[/]")
    console.print(f"best: [bold]{report['best']['id']}[/] — {report['best']['reason']}")
    serving = report.get("serving") or {}
    if serving:
        rec = serving.get("recommendation") or {}
        sizes = ", ".join(str(b) for b in serving.get("batch_sizes", []))
        console.print(
            f"serving (batch {sizes}; +{serving.get('wall_s', 0):.0f} s): "
            + (rec.get("text") or "no recommendation")
        )
    for n in report.get("notes", []):
        console.print(f"[dim]note: {n}[/]")
