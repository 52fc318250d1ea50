"""Preparation speed (images/s) of each data source, end to end (source -> shards + manifest + meta).

    python bench/data_speed.py [--size 32] [--shapes 4000] [--folder 500] [--s3]

shapes: the shapes world with the evaluation holdout; digits: sklearn's 1,797 digits; imagefolder: a local folder
of PNGs (64x64 shapes renders, resized to --size) written first; --s3 also reads that folder from a moto S3
server on 127.0.0.1. Writes reports/data/speed.json and a captioned sample grid per dataset under
reports/data/<name>/samples.png. Timings are wall-clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twinflow_core.data.config import DataConfig  # noqa: E402
from twinflow_core.data.prepared import load_prepared, prepare, save_sample_grid  # noqa: E402


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    from twinflow_core.data.shapes import shapes_sample

    root.mkdir(parents=True)
    lines = []
    for i in range(n):
        s = shapes_sample(i, 64, 123)
        Image.fromarray(s.image).save(root / f"img{i:05d}.png")
        lines.append(json.dumps({"file_name": f"img{i:05d}.png", "text": s.caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def timed(name: str, data: dict, tmp: Path, grid: bool = True) -> dict:
    cfg = DataConfig.from_dict(data)
    path, meta, seconds = prepare(cfg, root=REPO, out=tmp / name, progress=False)
    if grid:
        save_sample_grid(load_prepared(path), REPO / "reports" / "data" / name / "samples.png")
    row = {
        "dataset": name,
        "source": cfg.source,
        "images": meta["n"],
        "size": cfg.image_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(meta["n"] / seconds, 1),
    }
    print(
        f"{name:>16}: {row['images']:6d} images at {row['size']}px in {row['seconds']:6.2f} s "
        f"= {row['images_per_s']:7.1f} images/s",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--shapes", type=int, default=4000)
    parser.add_argument("--folder", type=int, default=500)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rows.append(
            timed(
                "shapes",
                {"name": "shapes", "image_size": args.size, "shapes": {"n_images": args.shapes}},
                tmp,
                grid=False,
            )
        )
        rows.append(timed("digits", {"name": "digits", "image_size": args.size}, tmp))
        folder = make_folder(tmp / "folder", args.folder)
        rows.append(
            timed(
                "imagefolder",
                {
                    "name": "imagefolder",
                    "source": "imagefolder",
                    "image_size": args.size,
                    "imagefolder": {"path": str(folder)},
                },
                tmp,
            )
        )
        if args.s3:
            import logging

            import boto3
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
                os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
                endpoint = f"http://127.0.0.1:{port}"
                client = boto3.client("s3", endpoint_url=endpoint)
                client.create_bucket(Bucket="bench")
                for p in sorted(folder.iterdir()):
                    client.put_object(Bucket="bench", Key=f"folder/{p.name}", Body=p.read_bytes())
                rows.append(
                    timed(
                        "imagefolder-s3",
                        {
                            "name": "imagefolder-s3",
                            "source": "imagefolder",
                            "image_size": args.size,
                            "imagefolder": {"path": "s3://bench/folder", "endpoint_url": endpoint},
                        },
                        tmp,
                        grid=False,
                    )
                )
            finally:
                server.stop()
    out = REPO / "reports" / "data" / "speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"note": "wall clock; machine shared with other work", "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
