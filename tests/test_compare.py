import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf
from PIL import Image

from vaelab.compare import (
    Run,
    build_table,
    grouped,
    local_runs,
    main,
    markdown,
    means,
    natural_key,
    parse_args,
    parse_overrides,
    save_plot,
    wandb_runs,
    write_csv,
)

METRICS = ["val/elbo", "val/kl"]
# (kl_weight, latent_dim) -> (val/reconstruction, val/kl): more beta, less KL, worse reconstruction
RESULTS = {
    ("1", "4"): (-100.0, 10.0),
    ("1", "10"): (-90.0, 15.0),
    ("4", "4"): (-120.0, 4.0),
    ("4", "10"): (-115.0, 5.0),
}
FAILURE = "model.latent_dim must be a positive integer, got 0"


def overrides(kl_weight: str, latent_dim: str) -> list[str]:
    return ["data.size=200", f"model.kl_weight={kl_weight}", f"model.latent_dim={latent_dim}"]


def metrics(reconstruction: float, kl: float) -> dict:
    return {
        "status": "ok",
        "best_checkpoint": "checkpoints/epoch001.ckpt",
        "global_step": 20,
        "val/reconstruction": reconstruction,
        "val/kl": kl,
        "val/elbo": reconstruction - kl,
    }


def write_job(folder: Path, job_overrides: list[str], job_metrics: dict | None) -> None:
    """A job folder as Hydra and train.py leave it."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(job_overrides), folder / ".hydra" / "overrides.yaml")
    if job_metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(job_metrics))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 beta x latent-size sweep, a failed job (number 10, to check the order) and a
    job still running."""
    folder = tmp_path / "multirun" / "2026-11-28" / "03-24-31"
    for number, ((kl_weight, latent_dim), result) in enumerate(RESULTS.items()):
        write_job(folder / str(number), overrides(kl_weight, latent_dim), metrics(*result))
    write_job(folder / "10", overrides("4", "0"), {"status": "failed", "error": FAILURE})
    write_job(folder / "11", overrides("8", "4"), None)
    return folder


def test_parse_overrides_keeps_the_value_after_the_first_equals_sign():
    assert parse_overrides(
        ["+x=1", "++y.z=a=b", "~w=2", "model=conv_vae", "just_a_tag", "q='a b'"]
    ) == {"x": "1", "y.z": "a=b", "w": "2", "model": "conv_vae", "q": "'a b'"}
    assert sorted(["10", "9", "x2", "x10", "x1"], key=natural_key) == ["9", "10", "x1", "x2", "x10"]


def test_table_of_a_sweep_has_the_swept_parameters_and_marks_failures(sweep):
    table = build_table(local_runs([sweep]), METRICS)
    assert table.params == ["model.kl_weight", "model.latent_dim"]  # data.size never varies
    assert table.header == ["run", *table.params, *METRICS, "status", "error"]
    assert table.rows(digits=1) == [
        ["03-24-31/0", "1", "4", "-110.0", "10.0", "ok", ""],
        ["03-24-31/1", "1", "10", "-105.0", "15.0", "ok", ""],
        ["03-24-31/2", "4", "4", "-124.0", "4.0", "ok", ""],
        ["03-24-31/3", "4", "10", "-120.0", "5.0", "ok", ""],
        ["03-24-31/10", "4", "0", "", "", "failed", FAILURE],
        ["03-24-31/11", "8", "4", "", "", "missing", "no metrics.json: running or killed"],
    ]


def test_several_sweeps_in_one_table(sweep, tmp_path):
    other = tmp_path / "multirun" / "2026-11-29" / "10-00-00"
    write_job(other / "0", [*overrides("1", "4"), "seed=1"], metrics(-99.0, 11.0))
    table = build_table(local_runs([sweep, other]), ["val/elbo"])
    assert table.params == ["model.kl_weight", "model.latent_dim", "seed"]
    assert [row[0] for row in table.rows()][-2:] == ["03-24-31/11", "10-00-00/0"]
    assert table.rows()[-1][1:5] == ["1", "4", "1", "-110.0"]
    assert table.rows()[0][3] == ""  # no seed override in the first sweep


def test_csv_and_markdown_outputs(sweep, tmp_path):
    table = build_table(local_runs([sweep]), METRICS)
    write_csv(table, tmp_path / "runs.csv")
    with (tmp_path / "runs.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6
    assert rows[1] == {
        "run": "03-24-31/1",
        "model.kl_weight": "1",
        "model.latent_dim": "10",
        "val/elbo": "-105.0",
        "val/kl": "15.0",
        "status": "ok",
        "error": "",
    }
    assert rows[4]["status"] == "failed" and rows[4]["error"] == FAILURE
    lines = markdown(table).splitlines()
    assert lines[:3] == [
        "| run | model.kl_weight | model.latent_dim | val/elbo | val/kl | status | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| 03-24-31/0 | 1 | 4 | -110.00 | 10.00 | ok |  |",
    ]
    assert lines[6] == f"| 03-24-31/10 | 4 | 0 |  |  | failed | {FAILURE} |"
    finished = build_table([run for run in table.runs if run.status == "ok"], METRICS)
    assert finished.header[-1] == "status" and finished.rows()[0][-1] == "ok"  # no error column


def test_plot_of_a_metric_against_a_swept_parameter(sweep, tmp_path, monkeypatch):
    runs = local_runs([sweep])
    assert means(grouped(runs, "val/kl", "model.latent_dim", "model.kl_weight")) == {
        "model.kl_weight=1": [("4", 10.0), ("10", 15.0)],
        "model.kl_weight=4": [("4", 4.0), ("10", 5.0)],  # the failed latent_dim=0 left out
    }
    # without a hue, runs that share an x value are averaged
    assert means(grouped(runs, "val/elbo", "model.kl_weight")) == {
        "val/elbo": [("1", -107.5), ("4", -122.0)]
    }
    out = tmp_path / "plots" / "kl.png"
    monkeypatch.setenv("COLUMNS", "200")
    code = main(
        [str(sweep), "--plot", "val/kl", "val/elbo", "--x", "model.latent_dim"]
        + ["--hue", "model.kl_weight", "--out", str(out)]
    )
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (900, 350)  # one 450 x 350 panel per metric
        colours = {colour for _, colour in image.convert("RGB").getcolors(900 * 350)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # one line per beta


def test_plot_against_a_categorical_parameter(tmp_path):
    results = [("mlp_vae", -100.0), ("conv_vae", -90.0), ("mlp_vae", -110.0)]
    runs = [Run(str(i), {"model": m}, {"val/elbo": e}) for i, (m, e) in enumerate(results)]
    lines = means(grouped(runs, "val/elbo", "model"))
    assert lines == {"val/elbo": [("conv_vae", -90.0), ("mlp_vae", -105.0)]}
    groups = grouped(runs, "val/elbo", "model")  # each run's value, for the seeds' spread
    assert groups == {"val/elbo": [("conv_vae", [-90.0]), ("mlp_vae", [-100.0, -110.0])]}
    save_plot({"val/elbo": groups}, "model", tmp_path / "models.png")
    with Image.open(tmp_path / "models.png") as image:
        assert image.size == (450, 350)


def test_plot_against_each_models_own_hyperparameter(tmp_path):
    """The Locatello et al. plot: one line per model, each against its own hyperparameter."""
    results = [
        ("beta_vae", "model.kl_weight", "1", 0.10),
        ("beta_vae", "model.kl_weight", "4", 0.20),
        ("beta_vae", "model.kl_weight", "4", 0.30),
        ("factor_vae", "model.gamma", "10", 0.05),
        ("factor_vae", "model.gamma", "40", 0.25),
        ("vae", "seed", "0", 0.08),  # no hyperparameter of the list: left out
    ]
    runs = [
        Run(str(i), {"experiment": e, name: value}, {"test/mig": mig})
        for i, (e, name, value, mig) in enumerate(results)
    ]
    lines = means(grouped(runs, "test/mig", ["model.kl_weight", "model.gamma"], hue="experiment"))
    assert lines == {
        "experiment=beta_vae": [("1", 0.10), ("4", pytest.approx(0.25))],
        "experiment=factor_vae": [("10", 0.05), ("40", 0.25)],
    }
    groups = grouped(runs, "test/mig", ["model.kl_weight", "model.gamma"], hue="experiment")
    assert groups["experiment=beta_vae"] == [("1", [0.10]), ("4", [0.20, 0.30])]
    save_plot({"test/mig": groups}, "model.kl_weight / model.gamma", tmp_path / "study.png")
    with Image.open(tmp_path / "study.png") as image:
        assert image.size == (450, 350)
    args = parse_args(
        [
            "--plot",
            "test/mig",
            "--x",
            "model.kl_weight,model.gamma",
            "--out",
            "a.png",
            str(tmp_path),
        ]
    )
    assert args.x == ["model.kl_weight", "model.gamma"] and args.folders == [tmp_path]


def test_cli_prints_one_row_per_run_and_writes_files(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    code = main(
        [str(sweep), "--metrics", "val/elbo", "--csv", str(tmp_path / "t.csv")]
        + ["--markdown", str(tmp_path / "t.md")]
    )
    assert code == 0
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("│")
    ]
    assert [row[:4] for row in rows] == [
        ["03-24-31/0", "1", "4", "-110.00"],
        ["03-24-31/1", "1", "10", "-105.00"],
        ["03-24-31/2", "4", "4", "-124.00"],
        ["03-24-31/3", "4", "10", "-120.00"],
        ["03-24-31/10", "4", "0", ""],
        ["03-24-31/11", "8", "4", ""],
    ]
    assert rows[4][4:] == ["failed", FAILURE]
    assert (tmp_path / "t.csv").read_text().count("\n") == 7
    assert (tmp_path / "t.md").read_text().count("\n") == 8


def test_cli_refuses_incomplete_arguments(sweep, tmp_path, capsys):
    for argv in (
        [],
        [str(sweep), "--wandb", "me/vaelab", "--group", "g"],
        ["--wandb", "me/vaelab"],
        [str(sweep), "--plot", "val/elbo", "--x", "model.latent_dim"],
        [str(tmp_path / "nope")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1  # no run folders in it


@dataclass
class FakeRun:
    """What wandb.Api().runs() yields, with the fields compare reads."""

    name: str
    tags: list[str]
    summary: dict
    state: str = "finished"
    config: dict = field(default_factory=dict)


@dataclass
class FakeApi:
    runs_: list[FakeRun]
    calls: list = field(default_factory=list)

    def runs(self, path: str, filters: dict, order: str) -> list[FakeRun]:
        self.calls.append((path, filters, order))
        return self.runs_


def recorded_runs() -> list[FakeRun]:
    """The sweep above as W&B holds it: tags are the job's overrides, the name joins them."""
    runs = []
    for (kl_weight, latent_dim), result in RESULTS.items():
        tags = ["sprites", *overrides(kl_weight, latent_dim)]
        summary = {
            **metrics(*result),
            "epoch": 3,
            "_runtime": 12.5,
            "images/samples": {"_type": "image-file", "path": "media/images/samples.png"},
        }
        config = {"model": {"kl_weight": float(kl_weight), "latent_dim": int(latent_dim)}}
        runs.append(FakeRun(",".join(tags[1:]), tags, summary, config=config))
    failed = overrides("4", "0")
    runs.append(FakeRun(",".join(failed), failed, {"status": "failed", "error": FAILURE}))
    crashed = overrides("8", "4")
    runs.append(FakeRun(",".join(crashed), crashed, {"_runtime": 3.0}, state="crashed"))
    return runs


def test_wandb_table_matches_the_local_table(sweep):
    api = FakeApi(recorded_runs())
    runs = wandb_runs("me/vaelab", "multirun/2026-11-28/03-24-31", api=api)
    assert api.calls == [("me/vaelab", {"group": "multirun/2026-11-28/03-24-31"}, "+created_at")]
    from_wandb = build_table(runs, METRICS)
    local = build_table(local_runs([sweep]), METRICS)
    assert from_wandb.params == local.params == ["model.kl_weight", "model.latent_dim"]
    assert [row[1:] for row in from_wandb.rows()[:5]] == [row[1:] for row in local.rows()[:5]]
    assert from_wandb.rows()[0][0] == "data.size=200,model.kl_weight=1,model.latent_dim=4"
    assert from_wandb.rows()[5][1:] == ["8", "4", "", "", "failed", "W&B: crashed"]


def test_cli_reads_wandb(monkeypatch, capsys):
    api = FakeApi(recorded_runs())
    monkeypatch.setattr(wandb, "Api", lambda: api)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["--wandb", "me/vaelab", "--group", "multirun/x", "--metrics", "val/kl"]) == 0
    out = capsys.readouterr().out
    assert api.calls[0][:2] == ("me/vaelab", {"group": "multirun/x"})
    assert out.count("│ ok") == 4 and out.count("│ failed") == 2
    assert "│ 10.00" in out and FAILURE in out
