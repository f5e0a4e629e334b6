"""Runs every benchmark and writes sims/bench/RESULTS.md and sims/bench/results.json.

Each figure is a ratio against a baseline run in the same process (or, for peak
memory, in a sibling process of the same kind), with the absolute times and the
machine description. The MPI exchange and sharded scaling benchmarks have their
own scripts (mpi_exchange.py, sharded_scaling.py) and are not run here.

    python sims/bench/run_all.py            # full: about 10-15 minutes on 2 cores
    python sims/bench/run_all.py --quick    # a smaller sweep, into sims/bench/quick/
    python sims/bench/run_all.py --only memory scaling   # rerun parts, keep the rest

OUT (``--out``) defaults to this folder, or to ``quick/`` under it (git-ignored) with
--quick, so that a quick check does not overwrite the committed RESULTS.md,
results.json and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import kernels  # noqa: E402
import memory  # noqa: E402
import round_time  # noqa: E402
import scaling  # noqa: E402
import streaming  # noqa: E402

PARTS = ["kernels", "round_time", "memory", "scaling", "streaming"]


def output_dir(quick: bool, out: str | None = None) -> str:
    """Where RESULTS.md, results.json and scaling.png go: ``out``, else this folder, or
    its git-ignored ``quick/`` for a quick run."""
    if out is not None:
        return out
    return os.path.join(HERE, "quick") if quick else HERE


def _ms(s: float) -> str:
    return f"{1e3 * s:.2f}"


def _measured(res: dict, part: str) -> list[str]:
    """A section's own machine line, when that part was run apart (``--only``)."""
    where = res.get("measured_on", {}).get(part)
    if not where:
        return []
    return [f"Measured on {where['date']} ({where['cpu']}, {where['cores']} cores, jax "
            f"{where['jax']}, load {where['load_avg_1m']:.1f} at the start).", ""]


def markdown(res: dict) -> str:
    """RESULTS.md from the collected results."""
    m = res["machine"]
    out = [
        "# fedf_jax benchmarks", "",
        f"Written by `python sims/bench/run_all.py{' --quick' if res['quick'] else ''}` "
        f"on {m['date']} (last part run in {res['wall_s'] / 60:.1f} min).", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; "
        f"{m['platform']}; Python {m['python']}, jax {m['jax']}; devices {m['devices']}. "
        f"1-minute load average at the start: {m['load_avg_1m']:.1f} (the box may be shared "
        "with other jobs: figures are medians, minimums are given, and every ratio is "
        "against a baseline timed in turn with it in the same process).", "",
        "## Fused protocol kernels", "", *_measured(res, "kernels"),
        "Effective GB/s = bytes the kernel must read and write / median time. Baseline: "
        "a jitted `x + y` on float32 vectors moving the same bytes, timed in turn with the "
        "kernel. Unfused = each stage a separate jitted call (ternarize, then pack; "
        "unpack to int8 [N, M], then Eq. 3). Target: fused >= 50 % of `x + y`.", "",
        "| kernel | scheme | N | M | fused ms (min) | GB/s | % of x+y | x+y GB/s "
        "| unfused / fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["kernels"]:
        out.append(
            f"| {r['kernel']} | {r['scheme']} | {r['N']} | {r['M']:,} | "
            f"{_ms(r['fused_median_s'])} ({_ms(r['fused_min_s'])}) | {r['fused_gbps']:.2f} | "
            f"{100 * r['fraction_of_copy']:.0f} % | {r['copy_gbps']:.2f} | "
            f"{r['unfused_over_fused']:.2f}x |")
    out += ["", "Worker kernels whose Q [N, M] would exceed 1 GiB of host memory are skipped.",
            "", "## Round time: FEDF vmap epoch vs bare vmap FedAvg round", "",
            *_measured(res, "round_time"),
            "Digits, MLP 64-128-10, 20 samples per worker, 1 local epoch, batch 10. FedAvg "
            "is written in the benchmark without the library. Compile = trace + XLA, apart "
            "from the timed rounds. Recompiles = XLA compilations (jax.monitoring) during the "
            "timed rounds, after the first epoch. Compile figures are wall (process CPU) "
            "seconds after a warm-up compile. Targets: ratio <= 1.3x, compile <= 2 s.", "",
            "| workers | FedAvg ms (min) | FEDF ms (min) | ratio | ratio of mins "
            "| FEDF compile s | FedAvg compile s | recompiles |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["round_time"]["rounds"]:
        out.append(
            f"| {r['workers']:,} | {_ms(r['fedavg_median_s'])} ({_ms(r['fedavg_min_s'])}) | "
            f"{_ms(r['fedf_median_s'])} ({_ms(r['fedf_min_s'])}) | {r['ratio']:.2f} | "
            f"{r['ratio_of_mins']:.2f} | {r['fedf_compile_s']:.2f} "
            f"({r['fedf_compile_cpu_s']:.2f}) | {r['fedavg_compile_s']:.2f} "
            f"({r['fedavg_compile_cpu_s']:.2f}) | {r['compiles_after_first_epoch']} |")
    if res["round_time"]["scan"]:
        out += ["", "Many epochs per call (`harness.scan`, K epochs in one `lax.scan`, as "
                "`--scan-epochs K` runs them through `harness.compile_runner`) vs K "
                "calls of the epoch step, each reading its outputs back to the host (as the "
                "run log does); the scan reads its K stacked outputs once.", "",
                "| workers | K | loop ms/epoch | scan ms/epoch | scan / loop | scan compile s |",
                "|---:|---:|---:|---:|---:|---:|"]
        for r in res["round_time"]["scan"]:
            out.append(f"| {r['workers']:,} | {r['k']} | {_ms(r['loop_epoch_median_s'])} | "
                       f"{_ms(r['scan_epoch_median_s'])} | {r['scan_over_loop']:.2f} | "
                       f"{r['scan_compile_s']:.2f} |")
    mem = res["memory"]
    out += ["", "## Memory", "", *_measured(res, "memory"),
            "Peak resident set (VmHWM) of a fresh process that builds the data, compiles "
            "and runs 3 epochs; baseline: the bare FedAvg round in a process of its own. "
            "Target: FEDF <= 4 GiB at 10,000 workers.", "",
            "| run | workers | RSS after data MiB | peak RSS MiB |", "|---|---:|---:|---:|"]
    for kind, r in mem["peak"].items():
        out.append(f"| {kind} | {r['workers']:,} | {r['rss_data_mib']:.0f} | "
                   f"{r['peak_rss_mib']:.0f} |")
    s = mem["slope"]
    out += ["", f"FEDF / FedAvg peak RSS: {mem['peak_ratio']:.2f}x.", "",
            f"RSS over {s['epochs']} epochs at {s['workers']} workers (every epoch's outputs "
            f"read back): {s['rss_first_mib']:.0f} -> {s['rss_last_mib']:.0f} MiB; fitted "
            f"slope after epoch {s['warmup_epochs']}: **{s['slope_mib_per_1000_epochs']:+.2f} "
            f"MiB per 1,000 epochs**; XLA compilations after the first epoch: "
            f"**{s['compiles_after_first_epoch']}**; {s['wall_s']:.1f} s wall.", ""]
    sc = res["scaling"]
    out += ["## Scaling", "", *_measured(res, "scaling"),
            f"![scaling]({os.path.basename(sc['plot'])})", "",
            "Memory is XLA's account of the compiled epoch (arguments + outputs + "
            "temporaries). Slopes are log-log fits against N*M over all but the smallest "
            "point of a sweep.", "",
            "| sweep | N | M | FEDF ms (min) | FedAvg ms | ratio | compiled MiB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in sc["sweeps"].items():
        for r in rows:
            out.append(f"| {name} | {r['N']:,} | {r['M']:,} | {_ms(r['fedf_median_s'])} "
                       f"({_ms(r['fedf_min_s'])}) | {_ms(r['fedavg_median_s'])} | "
                       f"{r['ratio']:.2f} | {r['fedf_compiled_bytes'] / 2**20:.1f} |")
    out.append("")
    for name, f in sc["fits"].items():
        fedavg = f.get("fedavg_time_slope")
        out.append(f"- {name}: FEDF time slope {f['time_slope']:.2f}"
                   + (f" (bare FedAvg {fedavg:.2f})" if fedavg is not None else "")
                   + f", memory slope {f['memory_slope']:.2f}")
    out.append("")
    if "streaming" in res:
        out += ["## Streaming workers (`--worker-chunk`)", "", *_measured(res, "streaming"),
                *streaming_markdown(res["streaming"])]
    return "\n".join(out)


def streaming_markdown(st: dict) -> list[str]:
    """The streaming section's body: epoch time and peak memory vs N, chunked and whole."""
    out = [f"FEDF as `fedf simulate` runs it on `--data synthetic`, {st['samples_per_worker']} "
            f"samples per worker (the data grows with N), `--worker-chunk {st['chunk']}` "
            "against the unchunked run where it fits. Each row is a fresh child process: "
            "data, compile and a warm-up epoch, then the timed epochs (read back to the "
            "host). Data = resident set once the data is placed; peak = VmHWM; peak - data = "
            "what compiling and running the epoch adds. Goals: time linear in N (log-log "
            "slope <= 1.05), peak - data flat in N.", "",
            "K' = rows trained at once (`stream.plan`'s chunk; with G groups, G times each "
            "group's chunk of at most K // G rows): peak - data follows K', not N.", "",
            "| N | K | K' | epoch s (min) | data MiB | peak MiB | peak - data MiB | compile s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = sorted(st["chunked"] + st["whole"], key=lambda r: (r["N"], r["chunk"] is None))
    for r in rows + st.get("grouped", []):
        g = r.get("groups", 1)
        where = f" in {g} groups" if g > 1 else ""
        n, k = r["N"] // g, (r["chunk"] or r["N"]) // g
        rows_at_once = g * -(-n // -(-n // k))
        out.append(f"| {r['N']:,}{where} | {r['chunk'] or 'whole'} | {rows_at_once:,} | "
                   f"{r['median_s']:.2f} "
                   f"({r['min_s']:.2f}) | {r['rss_data_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                   f"{r['peak_rss_mib'] - r['rss_data_mib']:.0f} | {r['compile_s']:.1f} |")
    out += ["", "Chunked / whole epoch in one process (both programs on the same data, epochs "
            "timed in turn):", "", "| N | chunked ms | whole ms | ratio | ratio of mins "
            "| same final model |", "|---:|---:|---:|---:|---:|---|"]
    for p in st["pairs"]:
        out.append(f"| {p['N']:,} | {_ms(p['chunked_median_s'])} | {_ms(p['whole_median_s'])} "
                   f"| {p['ratio']:.2f} | {p['ratio_of_mins']:.2f} | {p['same_model']} |")
    out += ["", f"Log-log slope of the chunked epoch time (minimums) against N, N >= 10^4: "
            f"**{st['time_slope']:.2f}** (goal <= 1.05).", ""]
    for g in st.get("grouped", []):
        v = g.get("versus_flat")
        if v:
            out += [f"{g['groups']} groups / flat at {v['N']:,} workers, both with "
                    f"`--worker-chunk {v['chunk']}`, epochs timed in turn in one process: "
                    f"{v['ratio']:.2f} (of minimums {v['ratio_of_mins']:.2f}; flat "
                    f"{v['flat_median_s']:.2f} s, grouped {v['grouped_median_s']:.2f} s).", ""]
    sc = st.get("scale")
    if sc:
        out += [f"Done-when check: the {sc['big']:,}-worker epoch against "
                f"{sc['big'] // sc['small']} x the {sc['small']:,}-worker epoch (both "
                f"`--worker-chunk {sc['chunk']}`, 20 samples per worker), timed in turn in one "
                f"process: **{sc['ratio']:.2f}** (of minimums {sc['ratio_of_mins']:.2f}; "
                f"round by round {', '.join(f'{r:.2f}' for r in sc['per_round'])}; goal "
                f"<= 1.15): a log-log slope of "
                f"{1 + math.log(sc['ratio']) / math.log(sc['big'] / sc['small']):.2f} from "
                f"{sc['small']:,} to {sc['big']:,} workers.", ""]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes everywhere")
    parser.add_argument("--out", help="folder for RESULTS.md, results.json, scaling.png "
                        "(default: next to this script; quick/ under it with --quick)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS,
                        help="rerun these parts and keep the others from OUT/results.json")
    args = parser.parse_args()
    args.out = output_dir(args.quick, args.out)
    t0 = time.perf_counter()
    res = {}
    if set(args.only) != set(PARTS):
        kept = os.path.join(args.out, "results.json")
        if not os.path.isfile(kept):
            print(f"run_all: error: --only {' '.join(args.only)} keeps the other parts from "
                  f"{kept}, which does not exist; run every part first.", file=sys.stderr)
            return 2
        with open(kept) as f:
            res = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    res.update(machine=common.machine(), quick=args.quick)
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, load {m['load_avg_1m']:.1f}")
    for i, part in enumerate(args.only):
        print(f"[{i + 1}/{len(args.only)}] {part}", flush=True)
        if part == "kernels":
            res["kernels"] = kernels.run(args.quick)
        elif part == "round_time":
            workers = [100, 1000] if args.quick else [100, 1000, 10_000]
            res["round_time"] = round_time.run(workers, rounds=10 if args.quick else 0,
                                               scan_k=10, scan_workers=[100, 1000])
        elif part == "memory":
            res["memory"] = memory.run(args.quick)
        elif part == "scaling":
            res["scaling"] = scaling.run(args.quick, os.path.join(args.out, "scaling.png"))
        else:
            res["streaming"] = streaming.run(args.quick)
        res.setdefault("measured_on", {})[part] = common.machine()
    res["wall_s"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(markdown(res))
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')} and results.json "
          f"({res['wall_s'] / 60:.1f} min)"
          + (" — a quick run; the committed sims/bench/RESULTS.md is unchanged"
             if args.quick and os.path.abspath(args.out) != HERE else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
