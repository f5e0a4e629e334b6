"""``fedf report``: markdown tables, summary.json and PNG figures from run logs.

``fedf report RUN_DIR [RUN_DIR ...] [--out REPORT_DIR] [--target ACC] [--title TEXT]``
(or ``python -m analysis.report ...``) reads every ``run.jsonl`` named or found below
the RUN_DIRs, groups the runs whose configs agree on every field but the seed
(:mod:`analysis.runs`), aggregates over seeds and writes ``report.md``,
``summary.json`` and the figures into REPORT_DIR (default: ``report/`` inside the
first RUN_DIR). It prints the tables and how the runs were grouped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis import runs as runs_lib
from analysis import tables
from fedf_jax import runlog

HELP = "tables and figures (markdown, JSON, PNG) from run logs"
DESCRIPTION = """\
Read every run log (run.jsonl) in or below the RUN_DIRs, group the runs whose
configs (the run log header) agree on every field but the seed, aggregate over
seeds (mean ± sample std) and write REPORT_DIR/report.md (test accuracy, bytes per
epoch, time to a target accuracy and speedup vs centralized training), summary.json
(the same numbers) and PNG figures."""
EPILOG = """\
examples:
  fedf report runs/table2                         # every run below runs/table2
  fedf report runs/fedf runs/fedavg runs/central --out report --target 0.9
outputs:
  report.md, summary.json, accuracy_vs_epoch.png, accuracy_vs_time.png,
  loss_vs_epoch.png, bytes_per_epoch.png, speedup.png (with a centralized run)
The default target is 0.95 x the centralized mean final accuracy of each data/model
(without centralized runs: 0.9 x the lowest group mean best accuracy).
grouping:
  Runs that differ in any config field but `seed` (epochs, partition, scheme,
  backend, a worker's lr, ...) are separate rows, named by the fields that differ,
  e.g. "FEDF (d=+1) [epochs=10]". Centralized runs also ignore the fields of the
  FEDF split they were made beside (N, partition, sizes, master settings, backend).
"""
FIGURES = {
    "accuracy_vs_epoch.png": "test accuracy vs global epoch, one panel per N, "
                             "Centralized on every panel",
    "accuracy_vs_time.png": "test accuracy vs cumulative modeled deployed seconds",
    "loss_vs_epoch.png": "test loss vs global epoch",
    "bytes_per_epoch.png": "MB exchanged per global epoch per method and N (log scale)",
    "speedup.png": "speedup in modeled time to the target accuracy vs N "
                   "(centralized time / method time)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fedf report``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run folder (holding run.jsonl), a run.jsonl file, or a "
                        "folder searched recursively for run.jsonl files")
    parser.add_argument("--out", metavar="REPORT_DIR",
                        help="where to write the report (default: report/ inside the "
                        "first RUN_DIR)")
    parser.add_argument("--target", type=float, metavar="ACC",
                        help="test accuracy to reach, in (0, 1] (default: 0.95 x the "
                        "centralized mean final accuracy per data/model, else 0.9 x the "
                        "lowest group mean best accuracy)")
    parser.add_argument("--title", metavar="TEXT", help="title of report.md")


def default_out(first: str | Path) -> Path:
    """``report/`` inside the first RUN_DIR (beside the log when a file is given)."""
    first = Path(first)
    return (first.parent if first.is_file() else first) / "report"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tables.Stat):
        return value._asdict()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_list(runs: Sequence[runs_lib.Run], empty: Sequence[Path],
             names: dict[Path, str]) -> str:
    """Markdown list of the runs read, each with its group's name (and the logs without
    an epoch, skipped)."""
    rows = [[f"`{r.path}`", r.algorithm, names[r.path], str(r.workers), str(r.seed),
             str(len(r.epochs)), "yes" if r.complete else "no (no summary line)"]
            for r in runs]
    text = tables._table(["run log", "algorithm", "method", "N", "seed", "epochs",
                          "finished"], rows)
    if empty:
        text += "\n\nSkipped (no epoch line yet): " + ", ".join(f"`{p}`" for p in empty)
    return text


def _where(key: runs_lib.GroupKey) -> str:
    return f"{key.data}/{key.model} {key.name}" + (
        f" N={key.workers}" if key.workers is not None else "")


def grouping(groups: dict[runs_lib.GroupKey, list[runs_lib.Run]]) -> list[str]:
    """How the runs were grouped, one line per decision: the rule, each group that
    merges several runs, each (method, N) split by config, each reference choice."""
    n_runs = sum(len(v) for v in groups.values())
    free = [k for k in runs_lib.CENTRAL_FREE_KEYS if k not in ("worker_specs", "default_worker")]
    out = [f"{n_runs} run(s) in {len(groups)} group(s): runs are merged when their configs "
           "agree on every field but `seed` (Centralized runs compare only the first "
           f"worker's spec and ignore {', '.join(free)})."]
    for key, runs in groups.items():
        if len(runs) > 1:
            out.append(f"merged: {_where(key)}: {len(runs)} runs, seeds "
                       + ", ".join(str(r.seed) for r in runs))
    split: dict[tuple, list[runs_lib.GroupKey]] = {}
    for key in groups:
        split.setdefault((key.data, key.model, key.label, key.workers), []).append(key)
    for (data, model, label, n), keys in split.items():
        if len(keys) > 1:
            shown = [dict(k.variant) for k in keys]
            fields = [f for f in dict.fromkeys(f for v in shown for f in v)
                      if len({v.get(f) for v in shown}) > 1]
            out.append(f"split: {data}/{model} {label}" + (f" N={n}" if n is not None else "")
                       + f" into {len(keys)} groups by {', '.join(fields)}: "
                       + "; ".join(", ".join(f"{f}={v}" for f, v in k.variant) for k in keys))
    for data, model in dict.fromkeys((k.data, k.model) for k in groups):
        keys = [k for k in groups if (k.data, k.model) == (data, model)]
        fields = list(dict.fromkeys(f for k in keys for f, _ in k.variant))
        if fields:
            out.append(f"named: {data}/{model}: groups differ in {', '.join(fields)}; "
                       "the method column shows them")
        central = [k for k in keys if k.label == runs_lib.CENTRAL]
        if len(central) > 1:
            for k in keys:
                if k.label != runs_lib.CENTRAL:
                    ref = tables.reference(k, keys)
                    out.append(f"reference: {_where(k)} is compared with {ref.name}")
    return out


def notes(groups: dict[runs_lib.GroupKey, list[runs_lib.Run]]) -> list[str]:
    """Warnings worth reading: repeated seeds, runs of one group cut at different epochs."""
    out = []
    for key, runs in groups.items():
        name = _where(key)
        seeds = [r.seed for r in runs]
        if len(set(seeds)) < len(seeds):
            out.append(f"{name}: repeated seeds {seeds}; each run counts once.")
        epochs = {len(r.epochs) for r in runs}
        if len(epochs) > 1:
            out.append(f"{name}: runs have different numbers of logged epochs "
                       f"{sorted(epochs)} (a run died or is still running); final accuracy "
                       "is each run's last epoch.")
    return out


def make_report(run_dirs: Sequence[str | Path], out: str | Path | None = None,
                target: float | None = None, title: str | None = None) -> dict[str, Any]:
    """Reads the runs, writes report.md, summary.json and the figures into ``out``.

    Returns:
      The summary dict (also in summary.json, with ``"grouping"``: how the runs were
      grouped, one line per decision) plus ``"markdown"`` (report.md's text) and
      ``"tables"`` (the three tables, for printing).

    Raises:
      ValueError: a bad path, a malformed log, no epochs, or a bad target.
    """
    if target is not None and not (math.isfinite(target) and 0 < target <= 1):
        raise ValueError(f"--target (={target}) must be a test accuracy in (0, 1].")
    if not run_dirs:
        raise ValueError("no RUN_DIR given; pass run folders (`fedf simulate --out DIR`).")
    out = Path(out) if out is not None else default_out(run_dirs[0])
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the report.")
    runs, empty = runs_lib.load_runs(run_dirs)
    groups = runs_lib.group_runs(runs)
    targets, rows = tables.summarize(groups, target)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the folder ({e.strerror}).") from None

    from analysis import plots  # matplotlib only when a report is written

    goal = {(t["data"], t["model"]): t["target"] for t in targets}
    figures = {
        "accuracy_vs_epoch.png": plots.accuracy_vs_epoch(groups, out / "accuracy_vs_epoch.png",
                                                         goal),
        "accuracy_vs_time.png": plots.accuracy_vs_time(groups, out / "accuracy_vs_time.png",
                                                       goal),
        "loss_vs_epoch.png": plots.loss_vs_epoch(groups, out / "loss_vs_epoch.png"),
    }
    figures["bytes_per_epoch.png"] = plots.bytes_per_epoch(rows, out / "bytes_per_epoch.png")
    if any(k.label == runs_lib.CENTRAL for k in groups):
        figures["speedup.png"] = plots.speedup(rows, out / "speedup.png")

    title = title or "FEDF run report"
    target_lines = [f"- {t['data']} / {t['model']}: **{t['target']:.4f}** ({t['rule']})"
                    for t in targets]
    fig_lines = [f"- `{name}`: {FIGURES[name]}" if path is not None else
                 f"- `{name}`: not written (no method reached the target in both it and "
                 "Centralized)" for name, path in figures.items()]
    if "speedup.png" not in figures:
        fig_lines.append("- `speedup.png`: not written (no centralized run to compare with)")
    acc, byt, tim = tables.accuracy_table(rows), tables.bytes_table(rows), \
        tables.time_table(rows)
    how = grouping(groups)
    names = {r.path: k.name for k, rs in groups.items() for r in rs}
    sections = [
        f"# {title}", "",
        f"{len(runs)} run(s) in {len(groups)} group(s); numbers are mean ± sample std over "
        "seeds (n = runs with a value).", "",
        "## Grouping", "", *[f"- {line}" for line in how], "",
        "## Runs", "", run_list(runs, empty, names), "",
        "## Test accuracy (Table 2 analog)", "",
        "Final = last epoch; best = highest epoch. Gap = final accuracy minus the "
        "Centralized final accuracy of the same data/model, in percentage points.", "", acc,
        "", "## Data exchanged per global epoch (Table 3 analog)", "",
        "Mean over each run's epochs of the counted bytes (frame headers included in the "
        "total), in MB (1 MB = 10^6 bytes).", "", byt, "",
        "## Time to target accuracy", "",
        "Target (the first epoch whose test accuracy is >= it):", "", *target_lines, "",
        "Modeled s = seconds the run would take deployed (slowest worker + transfers), "
        "summed up to and including that epoch; wall s = measured here. Speedup = "
        "Centralized mean modeled time to target / the method's. Whole-run speedup = "
        "Centralized mean modeled time of the whole run / the method's (the paper's "
        "Fig. 2 measure when epochs are equal).", "", tim, "",
        "## Figures", "", *fig_lines, "",
    ]
    extra = notes(groups)
    if extra:
        sections += ["## Notes", "", *[f"- {n}" for n in extra], ""]
    markdown = "\n".join(sections)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    summary = {
        "title": title, "out": str(out), "targets": targets,
        "runs": [{"path": str(r.path), "algorithm": r.algorithm, "label": r.label,
                  "group": names[r.path], "data": r.data, "model": r.model,
                  "workers": r.workers, "seed": r.seed, "epochs": len(r.epochs),
                  "complete": r.complete} for r in runs],
        "grouping": how,
        "skipped": [str(p) for p in empty],
        "groups": _jsonable(rows), "units": {"bytes": "MB = 1e6 bytes in report.md; bytes "
                                             "here", "time": "seconds"},
        "figures": {k: (str(v) if v is not None else None) for k, v in figures.items()},
        "notes": extra,
    }
    (out / "summary.json").write_text(
        json.dumps(runlog.to_json(summary), indent=1, allow_nan=False) + "\n",
        encoding="utf-8")
    return {**summary, "markdown": markdown, "tables": "\n\n".join([acc, byt, tim])}


def main(args: argparse.Namespace) -> int:
    """Runs ``fedf report`` with parsed ``args``; prints the tables and where it wrote.

    Raises:
      ValueError: bad input (the CLI prints it as one line and exits with code 2).
    """
    rep = make_report(args.run_dirs, args.out, args.target, args.title)
    print("grouping:")
    print("\n".join(f"  {line}" for line in rep["grouping"]))
    print()
    print(rep["tables"])
    print(f"\nreport written to {rep['out']}/ (report.md, summary.json, "
          f"{len([f for f in rep['figures'].values() if f])} figures) from "
          f"{len(rep['runs'])} run(s)")
    return 0


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
