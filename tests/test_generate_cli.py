"""`twinflow generate`: a captioned prompt x seed grid from a local checkpoint or a registered MLflow model,
reproducible, with one-line errors; `twinflow --help` says what the tool is; the run summary shows the claim."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from support import mlflow_db
from support.pipeline import CAPTIONS, make_checkpoint

from flows.cli import main


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_grid_from_a_local_checkpoint_is_reproducible_and_seeded(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck")
    out = tmp_path / "grid" / "out.png"
    head = ["generate", CAPTIONS[0], CAPTIONS[3], "--model", str(ck), "--nfe", "1", "--out", str(out)]
    args = head + ["--seeds", "0", "1", "2"]
    assert main(args) == 0
    assert "2 prompt(s) x 3 seed(s), 1 NFE" in capsys.readouterr().out
    first = _sha(out)
    grid = np.asarray(Image.open(out))
    assert main(args) == 0 and _sha(out) == first  # same prompts, seeds: same pictures
    assert main(head + ["--seeds", "0", "5", "2"]) == 0
    assert _sha(out) != first  # another seed in the middle column
    # three columns, two rows of 96 px cells (+ captions): wider than tall
    assert grid.shape[1] > grid.shape[0] > 2 * 96
    assert (
        main(
            [
                "generate",
                CAPTIONS[1],
                "--model",
                str(ck),
                "--style",
                "euler",
                "--nfe",
                "4",
                "--cfg",
                "0.5",
                "--seeds",
                "0",
                "--out",
                str(tmp_path / "e.png"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "extra, message, code",
    [
        (["a purple hexagon"], "word 'purple' is not in the vocabulary", 11),  # a prompt is input data
        (["a red circle", "--nfe", "0"], "--nfe must be >= 1", 2),  # argument values: the usage family
        (["a red circle", "--cfg", "0.5"], "--cfg applies to --style euler only", 2),
    ],
)
def test_bad_input_is_one_line_in_its_exit_family(tmp_path, capsys, extra, message, code):
    ck = make_checkpoint(tmp_path / "ck")
    assert main(["generate", *extra, "--model", str(ck), "--out", str(tmp_path / "o.png")]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("twinflow generate: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.png").exists()


def test_a_missing_model_folder_or_registry_entry_is_named(tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o.png")]) == 13
    assert "no such generator folder" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                "models:/absent@champion",
                "--tracking-uri",
                uri,
                "--out",
                str(tmp_path / "o.png"),
            ]
        )
        == 14
    )
    assert "--model models:/absent@champion: not found in the MLflow store" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_from_the_registered_champion(tmp_path):
    from support.pipeline import make_outputs, scores

    from flows import register_step

    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=0)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    assert register_step.register_outputs(root, tracking_uri=uri)["promoted"]
    local, remote = tmp_path / "local.png", tmp_path / "remote.png"
    common = [CAPTIONS[0], "--seeds", "0", "1", "--tracking-uri", uri]
    assert main(["generate", *common, "--model", "models:/tiny-gen@champion", "--out", str(remote)]) == 0
    assert main(["generate", *common, "--model", str(root / "checkpoints" / "twinflow"), "--out", str(local)]) == 0
    assert np.array_equal(np.asarray(Image.open(remote))[30:], np.asarray(Image.open(local))[30:])  # title differs


def test_help_says_what_the_tool_is(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "TwinFlow one-step image generation" in text
    for command in ("generate", "run", "models", "eval", "toy"):
        assert f"\n    {command}" in text


def test_run_summary_shows_scores_with_errors_ratios_verdict_and_both_uis():
    from flows.commands.run import render_summary

    scores = {
        "geneval-shapes/overall@1nfe": 0.41,
        "geneval-shapes/overall_se@1nfe": 0.03,
        "base/geneval-shapes/overall@euler50-cfg0.5": 0.5,
        "base/geneval-shapes/overall_se@euler50-cfg0.5": 0.031,
        "ratio/geneval-shapes/overall@1nfe": 0.82,
        "ratio/geneval-shapes/overall_se@1nfe": 0.04,
    }
    reg = {
        "verdict": "passed",
        "reasons": [
            "geneval-shapes/overall@1nfe / base/geneval-shapes/overall@euler50-cfg0.5 = 0.820 (0.41 / 0.5) >= 0.8"
        ],
        "model_name": "twinflow-shapes",
        "version": "1",
        "created": True,
        "aliases": ["champion"],
        "champion": "1",
        "tracking_uri": "sqlite:///x/mlflow.db",
    }
    text = render_summary(
        {
            "stages": [{"stage": "evaluate", "ran": True, "seconds": 5}],
            "seconds": 9,
            "flow_run_name": "f",
            "flow_run_id": "id",
            "scores": scores,
            "registration": reg,
            "samples": ["reports/samples_1nfe.png"],
        }
    )
    assert "1 NFE 0.41 +- 0.03" in text and "base euler50-cfg0.5 0.5 +- 0.031" in text
    assert "twinflow geneval-shapes/overall @1nfe / reference: 0.820 +- 0.040" in text
    assert "gate: PASSED" in text and "= 0.820 (0.41 / 0.5) >= 0.8" in text
    assert "samples: reports/samples_1nfe.png" in text and "mlflow ui" in text and "Prefect UI" in text
