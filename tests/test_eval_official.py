"""Official backends: layouts, the runner (with stand-in scorers writing the official output formats), parsers,
and `twinflow eval geneval-summary / dpg-summary`."""

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli import main as cli
from twinflow_core.benchmarks import dpg_score, official
from twinflow_core.errors import ConfigError

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def official_results_jsonl(path: Path, verdicts: dict) -> None:
    """results.jsonl exactly as evaluate_images.py writes it (pandas records, metadata/details as JSON strings)."""
    rows = []
    for p, (tag, oks) in enumerate(verdicts.items()):
        tag_name = tag.split("#")[0]
        meta = {"tag": tag_name, "include": [{"class": "cat", "count": 1}], "prompt": f"a photo {p}"}
        for j, ok in enumerate(oks):
            rows.append(
                {
                    "filename": f"out/{p:05d}/samples/{j:04d}.png",
                    "tag": tag_name,
                    "prompt": meta["prompt"],
                    "correct": ok,
                    "reason": "" if ok else "expected cat>=1, found 0",
                    "metadata": json.dumps(meta),
                    "details": json.dumps({"cat": [[1.0, 2.0, 3.0, 4.0, 0.99]]}),
                }
            )
    with open(path, "w") as fp:
        pd.DataFrame(rows).to_json(fp, orient="records", lines=True)


VERDICTS = {  # tag#k: prompt k of that tag, 4 images each
    "single_object#0": [True, True, True, True],
    "single_object#1": [True, True, False, True],
    "two_object#0": [True, False, False, False],
    "two_object#1": [False] * 4,
    "counting#0": [False, False, True, False],
    "counting#1": [False] * 4,
    "colors#0": [True] * 4,
    "colors#1": [True, True, True, False],
    "position#0": [False] * 4,
    "position#1": [False, False, False, True],
    "color_attr#0": [True, False, True, False],
    "color_attr#1": [False] * 4,
}


def test_geneval_summary_command_gives_official_numbers(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    official_results_jsonl(path, VERDICTS)
    assert cli(["eval", "geneval-summary", str(path), "--out", str(tmp_path / "s.json")]) == 0
    s = json.loads(capsys.readouterr().out)
    # hand-computed: tag means 7/8, 1/8, 1/8, 7/8, 1/8, 2/8
    assert s["tags"]["single_object"]["score"] == pytest.approx(0.875)
    assert s["tags"]["color_attr"] == {"score": 0.25, "correct": 2, "total": 8}
    assert s["overall"] == pytest.approx((7 + 1 + 1 + 7 + 1 + 2) / 48)
    assert s["correct_images"] == pytest.approx(19 / 48)
    assert s["correct_prompts"] == pytest.approx(8 / 12)
    assert s["total_images"] == 48 and s["total_prompts"] == 12
    assert s["metrics"]["geneval/overall"] == pytest.approx(19 / 48)
    assert list(s["tags"]) == TAGS
    assert json.loads((tmp_path / "s.json").read_text()) == s


def test_geneval_summary_bad_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"tag": "colors"}\n')
    assert cli(["eval", "geneval-summary", str(bad)]) == 15
    err = capsys.readouterr().err
    assert "r.jsonl:1" in err and err.count("\n") == 1


def test_geneval_layout(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (2, 4, 8, 8, 3), dtype=np.uint8)
    metas = [
        {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"},
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"},
    ]
    official.write_geneval_layout(tmp_path, metas, imgs, grid=True)
    assert json.loads((tmp_path / "00001" / "metadata.jsonl").read_text()) == metas[1]
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == [f"000{i}.png" for i in range(4)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "00000" / "samples" / "0003.png")), imgs[0, 3])
    assert Image.open(tmp_path / "00000" / "grid.png").size == (16, 16)


def test_dpg_layout_tiles_in_official_crop_order(tmp_path):
    imgs = np.stack([np.full((6, 6, 3), 10 * k, np.uint8) for k in range(4)])[None]
    official.write_dpg_layout(tmp_path, ["item7"], imgs)
    grid = np.asarray(Image.open(tmp_path / "item7.png"))
    assert grid.shape == (12, 12, 3)
    tiles = official.split_dpg_grid(grid, 6)
    assert [int(t[0, 0, 0]) for t in tiles] == [0, 10, 20, 30]


STAND_IN_GENEVAL = textwrap.dedent('''
    """Stand-in for evaluate_images.py: same CLI and output; an image is correct when its mean is bright."""
    import argparse, json, os, re
    import numpy as np, pandas as pd
    from PIL import Image
    p = argparse.ArgumentParser(); p.add_argument("imagedir"); p.add_argument("--outfile")
    p.add_argument("--model-path")
    a = p.parse_args()
    rows = []
    for sub in sorted(os.listdir(a.imagedir)):
        folder = os.path.join(a.imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        meta = json.load(open(os.path.join(folder, "metadata.jsonl")))
        for name in sorted(os.listdir(os.path.join(folder, "samples"))):
            if not re.match(r"\\d+\\.png", name):
                continue
            ok = bool(np.asarray(Image.open(os.path.join(folder, "samples", name))).mean() > 128)
            rows.append(dict(filename=name, tag=meta["tag"], prompt=meta["prompt"], correct=ok, reason="",
                             metadata=json.dumps(meta), details="{}"))
    pd.DataFrame(rows).to_json(open(a.outfile, "w"), orient="records", lines=True)
''')


def _scorer(tmp_path, script, name, **kw):
    checkout = tmp_path / "checkout"
    checkout.mkdir(exist_ok=True)
    (checkout / name).write_text(script)
    return official.OfficialScorer(checkout=str(checkout), python=sys.executable, **kw)


def test_runner_calls_stand_in_geneval_and_parses(tmp_path):
    scorer = _scorer(
        tmp_path,
        STAND_IN_GENEVAL,
        "evaluate_images.py",
        require_gpu=False,
        weights="/w",
        command=[
            "{python}",
            "{checkout}/evaluate_images.py",
            "{imagedir}",
            "--outfile",
            "{outfile}",
            "--model-path",
            "{weights}",
        ],
    )
    metas = [{"tag": t, "include": [{"class": "cat", "count": 1}], "prompt": t} for t in ("colors", "counting")]
    imgs = np.zeros((2, 4, 8, 8, 3), np.uint8)
    imgs[0, :3] = 255  # colors: 3/4 bright; counting: none
    official.write_geneval_layout(tmp_path / "layout", metas, imgs)
    (tmp_path / "layout" / "notes").mkdir()  # non-digit folders are skipped
    s = official.run_geneval(scorer, tmp_path / "layout", tmp_path / "out" / "results.jsonl")
    assert s["tags"]["colors"]["score"] == 0.75 and s["tags"]["counting"]["score"] == 0.0
    assert s["metrics"]["geneval/overall"] == pytest.approx(0.375)
    assert s["correct_prompts"] == 0.5


def test_runner_says_it_needs_a_gpu(tmp_path):
    scorer = _scorer(
        tmp_path, STAND_IN_GENEVAL, "evaluate_images.py", gpu_check=["{python}", "-c", "import sys; sys.exit(3)"]
    )  # what a CPU-only torch answers
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        official.run_geneval(scorer, tmp_path, tmp_path / "r.jsonl")
    # the default check, in this project's CPU-only torch
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        official.run_geneval(_scorer(tmp_path, STAND_IN_GENEVAL, "evaluate_images.py"), tmp_path, tmp_path / "r.jsonl")
    with pytest.raises(ConfigError, match="checkout not found"):
        official.run_geneval(official.OfficialScorer(checkout=str(tmp_path / "nope")), tmp_path, tmp_path / "r.jsonl")
    with pytest.raises(ConfigError, match="unknown keys"):
        official.OfficialScorer.from_dict({"checkout": "x", "pyhton": "y"}, "evaluate.official.geneval")


STAND_IN_DPG = textwrap.dedent('''
    """Stand-in for compute_dpg_bench.py: same CLI and output files; answers yes when the tile is bright."""
    import argparse, os
    import numpy as np, pandas as pd
    from PIL import Image
    p = argparse.ArgumentParser()
    for o in ("--image-root-path", "--resolution", "--pic-num", "--vqa-model", "--csv", "--res-path"):
        p.add_argument(o)
    a = p.parse_args(); r = int(a.resolution)
    data = pd.read_csv(a.csv)
    qs = {}
    for i, line in data.iterrows():
        if i == 0:
            continue
        qs.setdefault(str(line.item_id), []).append(line.question_natural_language)
    scores = []
    with open(a.res_path, "w") as res, open(a.res_path.replace(".txt", "_detail.txt"), "w") as det:
        for fn in sorted(os.listdir(a.image_root_path)):
            img = np.asarray(Image.open(os.path.join(a.image_root_path, fn)))
            tiles = []
            for (x, y) in [(0, 0), (r, 0), (0, r), (r, r)][:int(a.pic_num)]:
                ans = "yes" if img[y:y + r, x:x + r].mean() > 128 else "no"
                for q in qs[fn.split(".")[0]]:
                    det.write(f"{fn}, {(x, y, x + r, y + r)}, {q}, {ans}\\n")
                tiles.append(float(ans == "yes"))
            scores.append(sum(tiles) / len(tiles))
            res.write(fn + ", " + ", ".join(str(t) for t in tiles) + ", " + str(scores[-1]) + "\\n")
        res.write("Model: x\\nL1 category scores:\\n\\tentity: 50.0\\nL2 category scores:\\n\\tentity - whole: 50.0\\n")
        res.write("Image path: x\\nSave results to: y\\nDPG-Bench score: " + str(100 * np.mean(scores)) + "\\n")
''')


def test_runner_calls_stand_in_dpg_and_rescores(tmp_path, capsys):
    rows = [
        dpg_score.Question("i1", 1, (0,), "entity - whole (cat)", "is there a cat?"),
        dpg_score.Question("i1", 2, (1,), "attribute - color (cat, red)", "is the cat red?"),
        dpg_score.Question("i2", 1, (0,), "entity - whole (dog)", "is there a dog?"),
    ]
    dpg_score.write_csv(rows, tmp_path / "q.csv")
    imgs = np.zeros((2, 4, 6, 6, 3), np.uint8)
    imgs[0, :2] = 255  # i1: tiles 0,1 yes
    imgs[1, :] = 255  # i2: all yes
    official.write_dpg_layout(tmp_path / "grids", ["i1", "i2"], imgs)
    scorer = _scorer(
        tmp_path,
        STAND_IN_DPG,
        "compute_dpg_bench.py",
        require_gpu=False,
        command=[
            "{python}",
            "{checkout}/compute_dpg_bench.py",
            "--image-root-path",
            "{imagedir}",
            "--resolution",
            "{resolution}",
            "--pic-num",
            "{pic_num}",
            "--vqa-model",
            "mplug",
            "--csv",
            "{csv}",
            "--res-path",
            "{outfile}",
        ],
    )
    out = tmp_path / "res" / "dpg_results.txt"
    r = official.run_dpg(scorer, tmp_path / "grids", out, tmp_path / "q.csv", resolution=6)
    assert r["score"] == pytest.approx(75.0) and r["score_from_image_lines"] == pytest.approx(75.0)
    assert r["metrics"]["dpg/score"] == pytest.approx(75.0) and r["metrics"]["dpg/l2/entity-whole"] == 50.0
    # rescored from the detail file: i1 lost its first question (official), so its parent is missing -> dropped
    resc = r["rescored"]
    assert resc["official"]["dropped"] == ["i1"] and resc["official"]["score"] == 100.0
    assert resc["corrected"]["incomplete"] == ["i1"]
    # the CLI on the same files
    assert cli(["eval", "dpg-summary", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(75.0)
    detail = out.with_name("dpg_results_detail.txt")
    assert cli(["eval", "dpg-summary", str(detail), "--csv", str(tmp_path / "q.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["dpg/score"] == 100.0
    assert cli(["eval", "dpg-summary", str(detail)]) == 10
    assert "needs --csv" in capsys.readouterr().err


def test_dpg_answers_jsonl_both_rules(tmp_path, capsys):
    rows = [
        dpg_score.Question("a", 1, (0,), "entity - whole (x)", "q1"),
        dpg_score.Question("a", 2, (0,), "entity - whole (y)", "q2"),
    ]
    dpg_score.write_csv(rows, tmp_path / "q.csv")
    ans = [
        {"item_id": "a", "tile": t, "proposition_id": p, "answer": "yes" if p == 2 else "no"}
        for t in range(4)
        for p in (1, 2)
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(a) for a in ans))
    assert cli(["eval", "dpg-summary", str(tmp_path / "a.jsonl"), "--csv", str(tmp_path / "q.csv")]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["dpg/score"] == 100.0 and m["dpg/score_corrected"] == 50.0


class BrightGenerator:
    """Stand-in generator: bright images at 1 NFE, dark ones otherwise (so the two settings score apart)."""

    def generate(self, captions, nfe=1, seed=0, style="few", cfg_scale=0.0):
        return np.full((len(captions), 8, 8, 3), 255 if nfe == 1 else 0, np.uint8)


def test_run_official_from_the_evaluate_section(tmp_path):
    from twinflow_core.benchmarks.official import run_official

    geneval = _scorer(tmp_path, STAND_IN_GENEVAL, "evaluate_images.py")
    prompts = tmp_path / "meta.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"tag": t, "include": [{"class": "cat", "count": 1}], "prompt": f"a {t}"})
            for t in ("colors", "counting", "position")
        )
        + "\n"
    )
    dpg_dir = tmp_path / "dpgck"
    (dpg_dir / "prompts").mkdir(parents=True)
    (dpg_dir / "compute_dpg_bench.py").write_text(STAND_IN_DPG)
    (dpg_dir / "prompts" / "i1.txt").write_text("a cat\n")
    dpg_score.write_csv(
        [
            dpg_score.Question("i0", 1, (0,), "entity - whole (x)", "x?"),
            dpg_score.Question("i1", 1, (0,), "entity - whole (cat)", "cat?"),
        ],
        tmp_path / "q.csv",
    )
    section = {
        "enabled": True,
        "geneval": {
            "checkout": geneval.checkout,
            "python": sys.executable,
            "require_gpu": False,
            "prompts": str(prompts),
            "images_per_prompt": 2,
            "command": ["{python}", "{checkout}/evaluate_images.py", "{imagedir}", "--outfile", "{outfile}"],
        },
        "dpg": {
            "checkout": str(dpg_dir),
            "python": sys.executable,
            "require_gpu": False,
            "csv": str(tmp_path / "q.csv"),
            "prompts_dir": str(dpg_dir / "prompts"),
            "command": [
                "{python}",
                "{checkout}/compute_dpg_bench.py",
                "--image-root-path",
                "{imagedir}",
                "--resolution",
                "{resolution}",
                "--pic-num",
                "{pic_num}",
                "--vqa-model",
                "mplug",
                "--csv",
                "{csv}",
                "--res-path",
                "{outfile}",
            ],
        },
    }
    m = run_official(BrightGenerator(), section, [1, 2], tmp_path / "work")
    assert m["geneval/overall@1nfe"] == 1.0 and m["geneval/overall@2nfe"] == 0.0
    assert m["geneval/correct_prompts@1nfe"] == 1.0
    assert m["dpg/score@1nfe"] == 100.0 and m["dpg/score@2nfe"] == 0.0
    assert m["dpg/score_corrected@1nfe"] == 100.0
    with pytest.raises(ConfigError, match="unknown keys"):
        run_official(BrightGenerator(), {"enabled": True, "gen_eval": {}}, [1], tmp_path / "w2")
