"""``python -m jwae_ext.evaluate`` on a tiny trained model: in-domain, cross-dataset, precomp."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from test_train import TINY

from jwae_ext import figures
from jwae_ext.checkpoint import load_model
from jwae_ext.data import UNK_ID, export_precomp, load_split, write_precomp
from jwae_ext.evaluate import main

TABLE_KEYS = {"r1", "r5", "r10", "medr", "meanr"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny jwae-mh run (1 epoch on 48 images, evaluated on 24)."""
    runs = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(runs), "--name", "tiny"]
    proc = subprocess.run(
        [*cmd, *TINY, "--epochs", "1"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return runs / "tiny"


def evaluate(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jwae_ext.evaluate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def tables(result: dict) -> dict:
    return {key: result[key] for key in ("i2t", "t2i", "rsum")}


def check_schema(result: dict) -> None:
    assert {"checkpoint", "variant", "trained_on", "data", "protocol", "images", "captions",
            "no_known_word", "seed", "i2t", "t2i", "rsum", "ties",
            "continuity"} <= set(result)  # fmt: skip
    for direction in ("i2t", "t2i"):
        assert set(result[direction]) == TABLE_KEYS
        assert all(0 <= result[direction][f"r{k}"] <= 100 for k in (1, 5, 10))
    assert result["rsum"] == pytest.approx(
        sum(result[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    )


def check_continuity(value: dict) -> None:
    assert set(value) == {"k", "class_agreement", "class_chance", "jaccard", "jaccard_chance"}
    assert set(value["class_agreement"]) == {"shape", "colour", "shape+colour"}
    numbers = [*value["class_agreement"].values(), *value["class_chance"].values()]
    assert all(0 <= v <= 1 for v in [*numbers, value["jaccard"], value["jaccard_chance"]])


def test_default_reproduces_the_runs_test_table_and_draws_figures(run, tmp_path):
    out, fig_dir = tmp_path / "eval.json", tmp_path / "figs"
    proc = evaluate(str(run / "best.pt"), "--out", str(out), "--figures", str(fig_dir))
    assert proc.returncode == 0, proc.stderr
    assert "R@1" in proc.stdout and "rsum" in proc.stdout and "continuity" in proc.stdout
    result = json.loads(out.read_text())
    check_schema(result)
    assert result["data"] == "synthetic-a/test" and result["images"] == 24
    assert result["captions"] == 120 and result["variant"] == "jwae-mh"
    # Same data, same weights, same kernel: exactly the trainer's own test table.
    assert tables(result) == tables(json.loads((run / "test.json").read_text()))
    check_continuity(result["continuity"])
    sizes = {
        "latent.png": figures.latent_space_size(1),
        "retrieval-t2i.png": figures.retrieval_size(4),
        "retrieval-i2t.png": figures.retrieval_size(4),
        "curves.png": figures.training_curves_size(run / "metrics.jsonl"),
    }
    for name, size in sizes.items():
        assert imread(fig_dir / name).shape[:2] == size, name


def test_cross_dataset_from_a_run_folder(run, tmp_path):
    out = tmp_path / "cross.json"
    proc = evaluate(str(run), "--data", "synthetic-b", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    check_schema(result)
    assert result["checkpoint"].endswith("best.pt")
    assert result["trained_on"] == "synthetic-a" and result["data"] == "synthetic-b/test"
    check_continuity(result["continuity"])
    # The other style's phrasing holds words the model never saw: they were read as <unk>.
    vocab = load_model(run).vocab
    captions = load_split("synthetic-b", "test", num_images=24).captions
    assert any(UNK_ID in vocab.encode(c) for c in captions)


def test_precomp_folder_gives_the_embedded_table(run, tmp_path):
    folder = export_precomp(tmp_path / "precomp", "a", seed=0, sizes={"test": 24})
    fig_dir = tmp_path / "figs"
    proc = evaluate(str(run / "best.pt"), "--data", str(folder), "--figures", str(fig_dir))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "eval-precomp-test.json").read_text())
    check_schema(result)
    assert result["continuity"] is None  # a precomp folder does not know what images show
    assert tables(result) == tables(json.loads((run / "test.json").read_text()))
    # Codes can be drawn (by modality), pictures cannot.
    assert sorted(p.name for p in fig_dir.iterdir()) == ["curves.png", "latent.png"]


def test_captions_with_no_known_word_are_counted(run, tmp_path):
    folder = export_precomp(tmp_path / "precomp", "a", seed=0, sizes={"test": 24})
    captions = folder / "test_caps.txt"
    lines = captions.read_text().splitlines()
    lines[:7] = ["xylophone quux"] * 6 + ["zzyzx"]  # words the vocabulary cannot hold
    captions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "unknown.json"
    proc = evaluate(str(run), "--data", str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["no_known_word"] == 7
    assert f"{folder}/test: 7 of 120 captions have no known word" in proc.stdout


def test_missing_checkpoint_exits_cleanly(tmp_path):
    proc = evaluate(str(tmp_path / "none.pt"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def bad_files(tmp_path, run) -> dict[str, str]:
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    torch.save({"format": 1, "model": {}}, tmp_path / "partial.pt")
    state = torch.load(run / "best.pt", weights_only=True)
    state["model_config"]["embed_size"] += 1
    torch.save(state, tmp_path / "resized.pt")
    write_precomp(tmp_path / "narrow", "test", np.ones((4, 7), np.float32), ["a b"] * 4)
    return {
        "garbage": "garbage.pt",
        "partial": "partial.pt",
        "resized": "resized.pt",
        "narrow": "narrow",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{garbage}"], "refusing to load checkpoint"),
        (["{partial}"], "lacks config, model_config, vocab"),
        (["{resized}"], "does not describe a valid model: Error(s) in loading state_dict"),
        (["{run}", "--data", "/no/such/folder"], "neither an embedded dataset"),
        (["{run}", "--split", "train2"], "splits ('train', 'dev', 'test')"),
        (["{run}", "--data", "{narrow}", "--split", "dev"], "no split 'dev'"),
        (["{run}", "--data", "{narrow}"], "7-dimensional image features"),
        (["{run}", "--protocol", "1k"], "5000 rows"),
        (["{run}", "--num-images", "0"], "--num-images must be >= 1"),
        (["{empty}"], "holds no checkpoint"),
    ],
)
def test_bad_input_gives_a_message_and_exit_2(run, tmp_path, capsys, args, message):
    names = {k: str(tmp_path / v) for k, v in bad_files(tmp_path, run).items()}
    (tmp_path / "empty").mkdir()
    names.update(run=str(run / "best.pt"), empty=str(tmp_path / "empty"))
    assert main([a.format(**names) for a in args]) == 2
    assert message in capsys.readouterr().err
