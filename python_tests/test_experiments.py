"""``python -m jwae_ext.experiments poster --quick``: the whole job on tiny data, and its resume."""

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys

import pytest
from matplotlib.image import imread

from jwae_ext import experiments, figures, seed_stats

VARIANTS = experiments.VARIANTS  # the poster rows, SCAN and SCAN+jWAE-MH included
GROUNDING = experiments.GROUNDING_VARIANTS  # the phrase-localization rows
SEEDS = (0, 1)


def poster(out, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jwae_ext.experiments", "poster", "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("poster")
    proc = poster(out, "--quick", "--seeds", *map(str, SEEDS))
    return out, proc


def test_results_hold_every_run_and_their_mean_and_std(job):
    out, proc = job
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {f"{v}-s{s}" for v in VARIANTS for s in SEEDS}
    assert set(results["summary"]) == {*VARIANTS, "image features"}
    for variant in VARIANTS:
        runs = [results["runs"][f"{variant}-s{s}"] for s in SEEDS]
        for run in runs:
            assert run["synthetic-a"]["data"] == "synthetic-a/test"
            assert run["synthetic-b"]["data"] == "synthetic-b/test"
            assert (
                run["synthetic-a"]["trained_on"]
                == run["synthetic-b"]["trained_on"]
                == "synthetic-a"
            )
        cell = results["summary"][variant]["cross/t2i R@5"]
        values = [r["synthetic-b"]["t2i"]["r5"] for r in runs]
        assert cell["values"] == values
        assert cell["mean"] == pytest.approx(statistics.fmean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        assert results["summary"][variant]["in/i2t R@1"]["values"] == [
            r["synthetic-a"]["i2t"]["r1"] for r in runs
        ]
    # The in-domain evaluation is the trainer's own test table of the run.
    trained = json.loads((out / "runs" / "jwae-mh-s1" / "test.json").read_text())
    assert results["runs"]["jwae-mh-s1"]["synthetic-a"]["rsum"] == trained["rsum"]
    assert set(results["summary"]["image features"]) == {
        f"cont/{h}" for t, h, _, _ in experiments._COLUMNS if t == "cont"
    }
    table = (out / "results.md").read_text()
    assert table in proc.stdout
    for needle in ("i2t R@1", "t2i R@5", "shape@10 (a)", "| chance |", *VARIANTS):
        assert needle in table
    mean, std = cell["mean"], cell["std"]
    assert f"{mean:.1f} ± {std:.1f}" in table


def test_the_phrase_localization_table(job):
    out, _ = job
    results = json.loads((out / "results.json").read_text())["grounding"]
    assert set(results["runs"]) == {f"grounding-{m}-s{s}" for m in GROUNDING for s in SEEDS}
    table = (out / "results.md").read_text()
    assert "## Phrase localization" in table
    for method in GROUNDING:
        cell = results["summary"][method]["r1"]
        runs = [results["runs"][f"grounding-{method}-s{s}"]["r1"] for s in SEEDS]
        assert cell["values"] == runs
        assert f"| {method} | {cell['mean']:.1f} ± {cell['std']:.1f} |" in table
    assert imread(out / "figures" / "grounding-synthetic-a.png").ndim == 3


def test_figures_are_drawn(job):
    out, _ = job
    fig_dir = out / "figures"
    for data in ("synthetic-a", "synthetic-b"):
        assert imread(fig_dir / f"latent-{data}.png").shape[:2] == figures.latent_space_size(2)
    for variant in ("vse++", "jwae-mh"):
        for direction in ("t2i", "i2t"):
            path = fig_dir / f"{variant}-synthetic-b-retrieval-{direction}.png"
            assert imread(path).shape[:2] == figures.retrieval_size(4)
    if importlib.util.find_spec("sklearn") is not None:  # the t-SNE needs the [tsne] extra
        tsne = imread(fig_dir / "tsne-images-synthetic-a.png")
        assert tsne.shape[:2] == figures.image_tsne_size(2)
    curves = sorted(p.name for p in fig_dir.glob("curves-*.png"))
    want = [f"curves-{v}-s{s}.png" for v in VARIANTS for s in SEEDS]
    want += [f"curves-grounding-{m}-s{s}.png" for m in GROUNDING for s in SEEDS]
    assert curves == sorted(want)


def test_a_second_start_skips_done_work_and_resumes_the_rest(job):
    out, _ = job
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.pt")}
    before = json.loads((out / "results.json").read_text())["summary"]
    # As if the job had been killed after training vse0-s0 but before its test and evaluations.
    for name in ("test.json", "eval-synthetic-a-test.json", "eval-synthetic-b-test.json"):
        (out / "runs" / "vse0-s0" / name).unlink()
    proc = poster(out, "--quick", "--seeds", *map(str, SEEDS))
    assert "vse0-s0: resuming" in proc.stdout
    skipped = (len(VARIANTS) + len(GROUNDING)) * len(SEEDS) - 1
    assert proc.stdout.count("trained, skipping") == skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.pt")}
    assert json.loads((out / "results.json").read_text())["summary"] == before


def test_refuses_to_mix_settings_in_one_folder(job, capsys):
    out, _ = job
    assert experiments.main(["poster", "--out", str(out), "--seeds", "0"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_markdown_of_hand_made_results():
    def evaluation(value: float) -> dict:
        row = {"r1": value, "r5": value + 1, "r10": value + 2, "medr": 1.0, "meanr": 1.0}
        cont = {
            "k": 10,
            "class_agreement": {"shape": 0.5, "colour": 0.25, "shape+colour": 0.1},
            "class_chance": {"shape": 1 / 6, "colour": 1 / 7, "shape+colour": 1 / 42},
            "jaccard": 0.3,
            "jaccard_chance": 0.05,
        }
        return {"i2t": row, "t2i": row, "rsum": 6 * value, "continuity": cont}

    evaluations = {
        "vse++": {
            s: {d: evaluation(10.0 + 2 * s) for d in ("synthetic-a", "synthetic-b")}
            for s in (0, 1, 2)
        }
    }
    baselines = {
        s: {d: {"continuity": evaluation(0)["continuity"]} for d in ("synthetic-a", "synthetic-b")}
        for s in (0, 1, 2)
    }
    summary = experiments.summarize(evaluations, baselines)
    assert summary["vse++"]["in/i2t R@1"]["mean"] == 12.0
    assert summary["vse++"]["in/i2t R@1"]["std"] == 2.0
    sizes = {"synthetic-a": (5, 25), "synthetic-b": (6, 30)}
    text = experiments.markdown(summary, experiments._chance(baselines), sizes, [0, 1, 2], "cmd")
    assert "synthetic-b test: 6 images, 30 captions" in text
    assert "| vse++ | 12.0 ± 2.0 | 12.0 ± 2.0 | 72.0 ± 12.0 |" in text
    assert "| vse++ | 13.0 ± 2.0 | 13.0 ± 2.0 | 72.0 ± 12.0 |" in text  # R@5 columns
    assert "| image features | 50.0 ± 0.0 | 25.0 ± 0.0 | 30.0 ± 0.0 |" in text
    assert "| chance | 16.7 | 14.3 | 5.0 | 16.7 | 14.3 | 5.0 |" in text


def test_one_seed_shows_no_spread():
    assert seed_stats.cell(seed_stats.stats([42.0])) == "42.0"
    assert seed_stats.cell(seed_stats.stats([1.0, 2.0])) == "1.5 ± 0.7"


def test_a_subset_of_rows_reuses_the_folder_s_runs(job, tmp_path):
    out = tmp_path / "poster"
    shutil.copytree(job[0], out)
    proc = poster(
        out, "--quick", "--seeds", *map(str, SEEDS), "--variants", "scan", "vse0", "--grounding"
    )
    assert proc.stdout.count("trained, skipping") == 2 * len(SEEDS)
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"scan", "vse0", "image features"}
    assert "| jwae-mh |" not in (out / "results.md").read_text()


def test_bad_variants_are_refused(capsys):
    assert experiments.main(["poster", "--variants", "scan", "scan"]) == 2
    assert "--variants must be distinct" in capsys.readouterr().err
