"""Compare the runs of one or more sweeps: a table of swept parameters and metrics, and plots.

vaelab-compare outputs/multirun/2026-11-28/03-24-31                  # a rich table
vaelab-compare SWEEP --metrics val/elbo val/kl --csv runs.csv --markdown runs.md
vaelab-compare SWEEP --plot val/elbo val/kl --x model.latent_dim --hue model.kl_weight --out a.png
vaelab-compare SWEEPS --plot test/mig --x model.gamma,model.tc_weight --hue experiment --out b.png
vaelab-compare --wandb ENTITY/PROJECT --group multirun/2026-11-28/03-24-31   # from W&B
"""

import argparse
import csv
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table as RichTable

DEFAULT_METRICS = ("val/elbo", "val/reconstruction", "val/kl", "test/elbo")
STATUS_STYLES = {"failed": "red", "missing": "yellow", "running": "yellow"}
Lines = dict[str, list[tuple[str, float]]]  # line label -> (x value, metric) points
Groups = dict[str, list[tuple[str, list[float]]]]  # line label -> (x value, one metric a run)


@dataclass
class Run:
    """One job: its name, the overrides it ran with, its final metrics and how it ended."""

    name: str
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    error: str = ""


@dataclass
class Table:
    """Runs with the parameters that differ between them and the metrics to show."""

    runs: list[Run]
    params: list[str]
    metrics: list[str]

    @property
    def errors(self) -> bool:
        """Whether any run has an error to show (the error column is left out otherwise)."""
        return any(run.error for run in self.runs)

    @property
    def header(self) -> list[str]:
        return ["run", *self.params, *self.metrics, "status", *(["error"] if self.errors else [])]

    def rows(self, digits: int | None = None) -> list[list[str]]:
        """Text cells; metrics rounded to `digits` decimals (None: full precision)."""
        return [
            [
                run.name,
                *(run.params.get(key, "") for key in self.params),
                *(number_text(run.metrics.get(key), digits) for key in self.metrics),
                run.status,
                *([run.error] if self.errors else []),
            ]
            for run in self.runs
        ]


def number_text(value: float | None, digits: int | None) -> str:
    if value is None:
        return ""
    return repr(value) if digits is None else f"{value:.{digits}f}"


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`key=value` overrides (Hydra's `+`/`++`/`~` prefixes dropped) as a dict."""
    pairs = (item.split("=", 1) for item in overrides if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def numeric(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def natural_key(text: str) -> list[tuple]:
    """Sort job folders as 2 < 10: digit runs compare as numbers."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    ]


def value_key(text: str) -> tuple:
    """Numbers first, in numeric order, then other values in natural order."""
    value = numeric(text)
    return (0, value, []) if value is not None else (1, 0, natural_key(text))


def varying(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between runs (all keys when nothing differs)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.params))
    swept = [key for key in keys if len({run.params.get(key) for run in runs}) > 1]
    return swept or keys


def build_table(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> Table:
    return Table(list(runs), varying(runs), list(metrics))


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries: metrics.json and W&B summaries also hold strings and dicts."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def local_run(job: Path, name: str) -> Run:
    """A job folder: .hydra/overrides.yaml, and metrics.json once the job has ended."""
    params = parse_overrides(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    metrics_file = job / "metrics.json"
    if not metrics_file.is_file():
        return Run(name, params, status="missing", error="no metrics.json: running or killed")
    saved = json.loads(metrics_file.read_text())
    return Run(name, params, numbers(saved), saved.get("status", "ok"), saved.get("error", ""))


def local_runs(folders: Sequence[Path]) -> list[Run]:
    """Every job under the folders (a sweep, a day of runs, or a single run folder)."""
    runs = []
    for folder in (folder.resolve() for folder in folders):
        jobs = sorted(
            (path.parent.parent for path in folder.rglob(".hydra/overrides.yaml")),
            key=lambda job: natural_key(str(job)),
        )
        runs += [local_run(job, str(job.relative_to(folder.parent))) for job in jobs]
    return runs


def wandb_run(run: Any) -> Run:
    """A W&B public-API run; the swept overrides are its `key=value` tags."""
    summary = dict(run.summary.items())
    status = summary.get("status")
    if status is None:
        status = {"finished": "ok", "running": "running"}.get(run.state, "failed")
    error = summary.get("error") or ("" if status in ("ok", "running") else f"W&B: {run.state}")
    return Run(run.name, parse_overrides(run.tags), numbers(summary), status, error)


def wandb_runs(path: str, group: str, api: Any = None) -> list[Run]:
    """The runs of one W&B group, oldest first (`api` defaults to wandb.Api())."""
    if api is None:
        import wandb

        api = wandb.Api()
    return [wandb_run(run) for run in api.runs(path, filters={"group": group}, order="+created_at")]


def print_table(table: Table, console: Console | None = None) -> None:
    rich_table = RichTable(show_lines=False)
    for column in table.header:
        rich_table.add_column(column, overflow="fold")
    for run, row in zip(table.runs, table.rows(digits=2), strict=True):
        rich_table.add_row(*row, style=STATUS_STYLES.get(run.status))
    (console or Console()).print(rich_table)


def write_csv(table: Table, path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(table.header)
        writer.writerows(table.rows())


def markdown(table: Table, digits: int = 2) -> str:
    """A GitHub pipe table."""
    lines = [table.header, ["---"] * len(table.header), *table.rows(digits)]
    return "".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n" for line in lines
    )


def grouped(
    runs: Sequence[Run], metric: str, x: str | Sequence[str], hue: str | None = None
) -> Groups:
    """Per hue value, each x value with the metric of every finished run there (one a seed),
    sorted by x. With several x parameters, each run's x is the first of them it has (each
    model's own hyperparameter, one line per model)."""
    names = [x] if isinstance(x, str) else list(x)
    groups: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        value = run.metrics.get(metric)
        name = next((name for name in names if name in run.params), None)
        if run.status != "ok" or name is None or value is None or not math.isfinite(value):
            continue
        label = f"{hue}={run.params.get(hue, '')}" if hue else metric
        groups.setdefault(label, {}).setdefault(run.params[name], []).append(value)
    return {label: sorted_items(points) for label, points in sorted_items(groups)}


def means(groups: Groups) -> Lines:
    """Per line, the (x, mean metric) points of `grouped`: the line a plot draws."""
    return {
        label: [(x_value, sum(ys) / len(ys)) for x_value, ys in points]
        for label, points in groups.items()
    }


def sorted_items(mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(mapping.items(), key=lambda item: value_key(item[0]))


def save_plot(panels: dict[str, Groups], x: str, out: Path) -> None:
    """One panel per metric, against x: numeric x on a numeric axis (logarithmic where its values
    span a factor of 10 or more), other x as categories; a line through the means, each run a
    small dot (the spread over seeds), and one legend for all panels below them."""
    from matplotlib.figure import Figure

    x_values = {v for groups in panels.values() for points in groups.values() for v, _ in points}
    categories = sorted(x_values, key=value_key)
    as_numbers = all(numeric(v) is not None for v in x_values)
    numbers = [numeric(v) for v in x_values] if as_numbers else []
    log_x = bool(numbers) and min(numbers) > 0 and max(numbers) >= 10 * min(numbers)
    figure = Figure(figsize=(4.5 * len(panels), 3.5), dpi=100, layout="constrained")
    handles = {}
    for axes, (metric, groups) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True
    ):
        for (label, points), line in zip(groups.items(), means(groups).values(), strict=True):
            xs = [numeric(v) if as_numbers else categories.index(v) for v, _ in points]
            (handles[label],) = axes.plot(xs, [y for _, y in line], marker="o", label=label)
            dots = [(x_run, y) for x_run, (_, ys) in zip(xs, points, strict=True) for y in ys]
            if any(len(ys) > 1 for _, ys in points):
                colour = handles[label].get_color()
                axes.scatter(*zip(*dots, strict=True), s=9, color=colour, alpha=0.5)
        if not as_numbers:
            axes.set_xticks(range(len(categories)), categories)
        if log_x:
            axes.set_xscale("log")
        axes.set(xlabel=textwrap.fill(x, 45), ylabel=metric)
        axes.grid(alpha=0.3)
    if len(handles) > 1:
        columns = min(len(handles), 3)
        figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vaelab-compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folders", nargs="*", type=Path, help="sweep or run folders")
    parser.add_argument(
        "--metrics", nargs="+", default=list(DEFAULT_METRICS), help="the metric columns"
    )
    parser.add_argument("--csv", type=Path, help="write the table as CSV")
    parser.add_argument("--markdown", type=Path, help="write the table as a Markdown table")
    parser.add_argument(
        "--plot", nargs="+", metavar="METRIC", help="plot metrics (mean over repeats) against --x"
    )
    parser.add_argument(
        "--x",
        type=lambda text: text.split(","),
        metavar="PARAM[,PARAM...]",
        help="the swept parameter on the x axis (several, comma-separated: each run's first)",
    )
    parser.add_argument("--hue", metavar="PARAM", help="one line per value of this parameter")
    parser.add_argument("--out", type=Path, help="the plot's PNG file")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    parser.add_argument("--group", help="the W&B group (a sweep folder under outputs/)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    if bool(args.folders) == bool(args.wandb):
        parser.error("give sweep folders or --wandb ENTITY/PROJECT --group NAME (not both)")
    if args.wandb and not args.group:
        parser.error("--wandb needs --group")
    if args.plot and not (args.x and args.out):
        parser.error("--plot needs --x PARAM and --out PNG")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The vaelab-compare command."""
    args = parse_args(argv)
    runs = wandb_runs(args.wandb, args.group) if args.wandb else local_runs(args.folders)
    console = Console()
    if not runs:
        console.print("no runs found (a run folder holds .hydra/overrides.yaml)")
        return 1
    table = build_table(runs, args.metrics)
    print_table(table, console)
    if args.csv:
        write_csv(table, args.csv)
    if args.markdown:
        args.markdown.write_text(markdown(table))
    if args.plot:
        panels = {metric: grouped(runs, metric, args.x, args.hue) for metric in args.plot}
        if not all(panels.values()):
            wanted = " or ".join(args.x)
            console.print(f"nothing to plot: no finished run has {wanted} and all of {args.plot}")
            return 1
        save_plot(panels, " / ".join(args.x), args.out)
        console.print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
