"""What isolating a run costs, ours against DVC's own: wall time on a toy project whose stages are all cached.

    python bench/isolation_overhead.py [--rounds 3] [--out bench/results/isolation_overhead.md]

Three ways to run one pipeline with a parameter override that no stage depends on (so every stage is
cached and only the machinery is timed), alternated round by round so that load on the machine hits all:
- in place:   `dvc repro` in the checkout (the baseline: what `make run` does, no isolation);
- worktree:   what the flow does with overrides (flows.workspace): a git worktree of HEAD with the uncommitted
              files, the override written there, `dvc repro`, the workspace saved as a DVC experiment ref,
              the worktree removed;
- exp --temp: `dvc exp run --temp -S ...`, DVC's temporary workspace and experiment commit.
Also checked: whether `dvc exp run --temp` sees an ignored (untracked) input, as a remote init fetched into
checkpoints/<stage>-init is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

DVC = [sys.executable, "-m", "dvc"]


def sh(args, cwd, env, check=True):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from support.pipeline import make_toy_project, toy_env

    from flows import workspace
    from flows.params import apply_overrides

    env = {**os.environ, **toy_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    os.environ.update(toy_env())
    tmp = Path(tempfile.mkdtemp(prefix="isolation-bench-"))
    project = make_toy_project(tmp / "proj", note=0)
    sh(DVC + ["repro"], project, env)  # everything made once; from here on every stage is cached
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "made"], project, env)

    def in_place(i):
        sh(DVC + ["repro"], project, env)

    def worktree(i):
        ws = workspace.create_isolated(project, f"bench-{i}", log=lambda _: None)
        apply_overrides(ws.path / "params.yaml", {"toy.note": i + 1})
        sh(DVC + ["repro"], ws.path, env)
        workspace.save_run_ref(ws.path, f"bench-{i}", "bench")
        workspace.remove_isolated(ws)

    def exp_temp(i):
        sh(DVC + ["exp", "run", "--temp", "-S", f"toy.note={1000 + i}"], project, env)

    ways = {"in place (dvc repro)": in_place, "worktree (flows.workspace)": worktree, "dvc exp run --temp": exp_temp}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(args.rounds):
        for name, fn in ways.items():
            t0 = time.monotonic()
            fn(i)
            times[name].append(time.monotonic() - t0)

    # an ignored input (like checkpoints/train-init, fetched from a remote before the stages run)
    (project / ".gitignore").write_text((project / ".gitignore").read_text() + "/fetched-init/\n")
    (project / "fetched-init").mkdir()
    (project / "fetched-init" / "w.txt").write_text("weights\n")
    dvc_yaml = (
        (project / "dvc.yaml")
        .read_text()
        .replace(
            "deps:\n    - data/prepared/toy\n    params:\n    - toy.seed\n    outs:\n    - checkpoints/base",
            "deps:\n    - data/prepared/toy\n    - fetched-init\n    params:\n    - toy.seed\n    outs:\n    - checkpoints/base",
        )
    )
    assert "fetched-init" in dvc_yaml
    (project / "dvc.yaml").write_text(dvc_yaml)
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "ignored dep"], project, env)
    temp = sh(DVC + ["exp", "run", "--temp", "-S", "toy.seed=9"], project, env, check=False)
    ws = workspace.create_isolated(project, "bench-ignored", log=lambda _: None)
    (ws.path / "fetched-init").mkdir()  # the flow fetches a remote init inside the run's workspace
    (ws.path / "fetched-init" / "w.txt").write_text("weights\n")
    apply_overrides(ws.path / "params.yaml", {"toy.seed": 9})
    ours = sh(DVC + ["repro"], ws.path, env, check=False)
    workspace.remove_isolated(ws)

    base = statistics.median(times["in place (dvc repro)"])
    lines = [
        "# Isolating a run: wall time, toy project, all stages cached",
        "",
        f"`python bench/isolation_overhead.py --rounds {args.rounds}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())});",
        "the 2-core machine was shared with other jobs, so absolute seconds are inflated; the three ways "
        "were alternated round by round.",
        "",
        "| way | median s | rounds (s) | overhead vs in place |",
        "|---|---:|---|---:|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| {name} | {med:.1f} | {', '.join(f'{t:.1f}' for t in ts)} | "
            f"{'-' if name.startswith('in place') else f'{med - base:+.1f} s'} |"
        )
    lines += [
        "",
        "An ignored input (a fetched init under a .gitignore'd folder) as a stage dependency:",
        f"- `dvc exp run --temp`: exit {temp.returncode}: "
        f"{(temp.stderr.strip().splitlines() or [temp.stdout.strip()[-200:]])[-1][:300]}",
        f"- worktree (flows.workspace; the init fetched inside it, as the flow does), `dvc repro`: exit {ours.returncode}: "
        f"{(ours.stderr.strip().splitlines() or ours.stdout.strip().splitlines() or [''])[-1][:300]}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
