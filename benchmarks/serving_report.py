"""The serving benchmark's report: the (measurement, value, ratio) rows with the targets' verdicts, the
throughput cells, and the markdown file with the setup and the notes that say how to read the figures."""

from __future__ import annotations

import os
import statistics

from benchmarks.common import format_number as fmt
from benchmarks.common import markdown_table, write_markdown_report
from benchmarks.serving_measure import IDLE_ROW, IDLE_SECONDS, LATENCY_BATCHES, SCRAPE_SECONDS, batching_text

LATENCY_TARGET_MS = 1.0
BATCHING_TARGET = 3.0
METRICS_TARGET = 0.98  # the Prometheus page (recording + scraping) may cost under 2 % of QPS
ROW_HEADER = ("measurement", "value", "ratio")


def build_rows(
    latency: dict, loads: dict, ceiling: dict, args, metrics: dict | None = None
) -> tuple[list[tuple[str, str, str]], dict]:
    """(measurement, value, ratio) rows and the two verdicts."""
    rows = []
    for batch in LATENCY_BATCHES:
        base = latency[("in-process", batch)]
        for where in ("in-process", "gRPC", "REST"):
            numbers = latency[(where, batch)]
            for q in ("p50", "p99"):
                ratio = "1" if where == "in-process" else f"{numbers[q] / base[q]:.2f}× in-process"
                rows.append((f"{where} latency {q}, batch {batch} (ms)", fmt(numbers[q]), ratio))
        gap = latency[("gRPC", batch)]["p50"] - base["p50"]
        verdict = f"target ≤ {LATENCY_TARGET_MS:g} ms: {'holds' if gap <= LATENCY_TARGET_MS else 'MISSED'}"
        rows.append((f"gRPC − in-process p50, batch {batch} (ms)", fmt(gap), verdict if batch == 1 else "–"))
        if batch == 1:
            idle = latency[(IDLE_ROW, 1)]["p50"]
            rows.append((f"{IDLE_ROW} p50, batch 1 (ms)", fmt(idle), f"{idle / base['p50']:.2f}× in-process"))
            rows.append(
                (
                    "gRPC − in-process-after-idle p50, batch 1 (ms)",
                    fmt(latency[("gRPC", 1)]["p50"] - idle),
                    "informative: the gap without TF's pool wake-up",
                )
            )
    on, off = latency[("gRPC, batching on", 1)], latency[("gRPC", 1)]
    for q in ("p50", "p99"):
        rows.append((f"gRPC latency {q}, batch 1, batching on (ms)", fmt(on[q]), f"{on[q] / off[q]:.2f}× off"))
    top = max(args.concurrency)
    for threads in args.concurrency:
        off_qps, on_qps = loads[(False, threads)]["qps"], loads[(True, threads)]["qps"]
        rows.append((f"QPS, {threads} clients, batching off", fmt(off_qps), "1"))
        note = f"{on_qps / off_qps:.2f}× off"
        if threads == top:
            note += f" (target ≥ {BATCHING_TARGET:g}×: {'holds' if on_qps / off_qps >= BATCHING_TARGET else 'MISSED'})"
        rows.append((f"QPS, {threads} clients, batching on", fmt(on_qps), note))
    c, n = ceiling, args.max_batch_size
    if metrics:
        ratios = metrics["ratios"]
        median = statistics.median(ratios)
        verdict = "holds" if median >= METRICS_TARGET else "MISSED"
        rows.append(
            (
                f"QPS ratio, {top} clients: metrics recorded + page scraped every {SCRAPE_SECONDS:g} s / not recorded",
                f"{median:.3f}",
                f"median of {len(ratios)} paired windows, spread {min(ratios):.3f}–{max(ratios):.3f} "
                f"(target ≥ {METRICS_TARGET:g}×: {verdict})",
            )
        )
        server_us = 1000 * loads[(False, top)]["server_cpu_ms"]
        rows.append(
            (
                "metrics CPU per Predict (µs), timed directly",
                fmt(metrics["record_us"]),
                f"{metrics['record_us'] / server_us:.2%} of the server's CPU per request",
            )
        )
        rows.append(("metrics page render (ms)", fmt(metrics["render_ms"]), f"once per scrape ({SCRAPE_SECONDS:g} s)"))
    rows.append(
        (
            f"in-process images/s, one caller, batch 1 → {n}",
            f"{fmt(c['batch1_ips'])} → {fmt(c['batchN_ips'])}",
            f"{c['batchN_ips'] / c['batch1_ips']:.2f}× (the signature's own gain, one caller)",
        )
    )
    rows.append(
        (
            f"in-process CPU ms per image, batch 1 → {n}",
            f"{fmt(c['batch1_cpu_ms'])} → {fmt(c['batchN_cpu_ms'])}",
            f"{c['batch1_cpu_ms'] / c['batchN_cpu_ms']:.2f}× (most batching can gain with the CPUs saturated)",
        )
    )
    verdicts = {
        "latency_gap_ms": latency[("gRPC", 1)]["p50"] - latency[("in-process", 1)]["p50"],
        "batching_ratio": loads[(True, top)]["qps"] / loads[(False, top)]["qps"],
    }
    return rows, verdicts


def load_details(loads: dict, args) -> str:
    """Markdown: one row per throughput cell (its median window)."""
    server_cpu = "server CPU ms/req" if args.clients == "process" else "server+client CPU ms/req"
    header = (
        "batching", "clients", "QPS", "QPS per window", "latency p50 / p99 (ms)", "server batches: mean rows",
        "signature call ms (median)", server_cpu, "client CPU ms/req", "our CPU (cores)", "others' CPU (cores)",
    )  # fmt: skip
    lines = []
    for (on, threads), w in sorted(loads.items()):
        flag = " ⚠" if w["other_cores"] > args.max_others else ""
        per_window = ", ".join(f"{q:.0f}" for q in w["all_qps"])
        lines.append(
            (
                "on" if on else "off",
                threads,
                f"{fmt(w['qps'])}{flag}",
                per_window,
                f"{fmt(w['p50'])} / {fmt(w['p99'])}",
                fmt(w["mean_batch"]),
                fmt(w["tf_ms"]),
                fmt(w["server_cpu_ms"]),
                fmt(w["client_cpu_ms"]),
                fmt(w["our_cores"]),
                fmt(w["other_cores"]),
            )  # fmt: skip
        )
    return markdown_table(header, lines, "lrrllrrrrrr")


def disturbance_text(results: dict, args) -> str:
    """How much other processes ran during the repetitions, and which figures they still disturb."""
    others = results["others"]
    every = [x for values in others.values() for x in values if x == x]
    if not every:
        return "CPU use of other processes: unknown (no /proc/stat)."
    disturbed = sorted(
        f"{key[0]} batch {key[1]}"
        if isinstance(key[0], str)
        else f"{key[1]} clients batching {'on' if key[0] else 'off'}"
        for key, values in others.items()
        if statistics.median(values) > args.max_others
    )
    text = (
        f"Other processes used a median {statistics.median(every):.2f} cores (max {max(every):.2f}) during the "
        f"{len(every)} repetitions; {results['retried']} were measured again (> {args.max_others:g} cores)."
    )
    if disturbed:
        text += f" Still disturbed in the median repetition: {', '.join(disturbed)} — treat them with care."
    return text


def write_markdown(args, info, results, rows, verdicts, wall, disturbance: str) -> None:
    about, latency = results["about"], results["latency"]
    cores = os.cpu_count()
    clients = (
        "a separate process (multiprocessing, spawn), so client-side Python does not take the server's GIL; the "
        f"two processes still share the {cores} CPUs (see the CPU columns)"
        if args.clients == "process"
        else "threads of the server's process: client-side Python competes with the server for the GIL and the CPUs"
    )
    gap, ratio = verdicts["latency_gap_ms"], verdicts["batching_ratio"]
    latency_verdict = "holds" if gap <= LATENCY_TARGET_MS else "missed"
    batching_verdict = "holds" if ratio >= BATCHING_TARGET else "missed"
    top = max(args.concurrency)
    notes = [
        f'"{IDLE_ROW}": the same call with a {IDLE_SECONDS * 1000:g} ms sleep before each (untimed). Back to back, '
        "TF's intra-op threads are still spinning when the next call comes; requests arriving over the network find "
        "them asleep and pay the wake-up (on this VM several tenths of a ms). The target is judged against the "
        "back-to-back figure, as defined; the after-idle row shows how much of the gap is that wake-up rather than "
        "gRPC and proto handling.",
        "The in-process figure includes `tf.constant` on the bytes and `.numpy()` of every output, as the server does "
        "around the same call. gRPC and REST are full round trips on loopback with the request built once: "
        "client-side `tf.make_tensor_proto` / JSON encoding is not timed, the response is deserialized (gRPC) or read "
        "(REST) but not converted to numpy.",
        '"server batches" and "signature call ms" come from the server\'s run_observer hook, which hears every '
        "Session::Run (one per formed batch with batching on). CPU columns: process CPU seconds per request, and per "
        'wall second ("cores") for our two processes and for everything else on the machine (psutil) — with '
        f"{cores} cores, ours + others near {cores} means the CPUs, not the server, are the limit.",
        f"The last two rows are what the signature itself gains from batching on this machine, batch "
        f"{args.max_batch_size} over batch 1: one caller's images/s (wall; TF may use several cores for one call) and "
        "CPU time per image. Once the cores are saturated — as at 16 clients, where concurrent batch-1 calls already "
        "run in parallel with batching off — throughput is bounded by CPU per request, so the CPU ratio is about the "
        "most server-side batching can deliver, less the per-request costs it cannot amortize (gRPC and proto "
        "handling, `tf.make_tensor_proto` of each output, the client).",
        "Each repetition starts fresh servers (batching off, then on; the order alternates), so slow phases of a "
        "shared machine hit every configuration; figures are medians over repetitions. Between runs they still move "
        "by 10–20 % (a VM's speed changes with its host's load, which /proc/stat does not show), and the "
        "sub-millisecond gRPC − in-process gap by more (1.0–2.3 ms across runs while this benchmark was written): "
        f"judge the latency target over several runs. {disturbance}",
    ]
    if latency[("REST", 1)]["p50"] >= 40:
        notes.append(
            "REST at ≥ 40 ms per request on a keep-alive connection is the delayed-ACK floor: the REST handler writes "
            "the headers and the body in two send()s on a socket without TCP_NODELAY (Nagle), so the body waits for "
            "the client's delayed ACK. It is a property of serving/rest.py, not of the REST API."
        )
    text = f"""# `petpipe serve` benchmark

`python -m benchmarks.serving{" --quick" if args.quick else ""}` — {info["date"]}, wall time {wall:.0f} s.

- gRPC − in-process p50 at batch 1: **{gap:.2f} ms** — target ≤ {LATENCY_TARGET_MS:g} ms **{latency_verdict}**
- batching on / off throughput at {top} clients: **{ratio:.2f}×** — target ≥ {BATCHING_TARGET:g}× **{batching_verdict}**
- metrics recorded and scraped every {SCRAPE_SECONDS:g} s / not recorded, throughput at {top} clients: see the rows
  "metrics" below — target ≥ {METRICS_TARGET:g}× (the page costs under 2 %); the direct CPU accounting beside it
  is the steadier figure, since windows move by several % between repetitions

{markdown_table(ROW_HEADER, rows, "lrl")}

Throughput cells (batch-1 gRPC Predicts back to back, each client its own channel; the median window by QPS):

{load_details(results["loads"], args)}

## Setup

{chr(10).join(f"- {k}: {v}" for k, v in info.items())}
- model: untrained, {about["architecture"]}, {about["parameters"]:,} parameters, image size {about["image_size"]};
  exported once with warmup requests; requests carry JPEGs of {about["jpeg"]}
- batching parameters file: `{batching_text(args).strip().replace(chr(10), " ")}` — timeout 0 (TF Serving's
  advice for CPU: a batch closes as soon as the batch thread is free, so batches form only under load and an idle
  request pays nothing), one batch thread (each signature call already spreads over the cores through TF's
  intra-op pool; trials with 2 threads, a 1–2 ms timeout or max_batch_size 32 were not better at 16 clients)
- latency: {args.reps} repetitions × {args.requests} sequential requests, each after {args.latency_warmup}
  warm-up requests; p50 and p99 per repetition, median over repetitions
- throughput: {args.reps} windows × {args.duration:g} s per cell, each after a {args.warmup_seconds:g} s warm-up
  window; QPS = answered requests / (last answer − window start); median over windows
- load generator: {clients}

## Notes

{chr(10).join(f"- {note}" for note in notes)}
"""
    write_markdown_report(args.out, text)
