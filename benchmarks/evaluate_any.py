"""Evaluating a method that is not ours, end to end: ``python benchmarks/evaluate_any.py --out DIR``.

Two parts, each printing its table and writing evaluation.json / .md / tradeoff.png under DIR:

1. ``DIR/synthetic``: :func:`stprivacy.evaluate_transform` on the embedded benchmark at the
   demo's sizes (768 train / 384 test videos, the demo's recognizers and 12 epochs), for an
   outside method given as a torch module ("mean frame": every frame replaced by the clip's mean
   frame, which removes the motion and keeps the appearance) next to every built-in baseline,
   attacked by the video ViTs and the per-frame 2D ViT.
2. ``DIR/files``: the command line on video files. Part of the benchmark is written as ``.mp4``
   files with a label CSV (the ``folder_csv`` dataset), the folder is byte-copied, and
   ``stprivacy evaluate --transformed-root copy=... --baselines raw`` runs on it; the script then
   checks that the copy's numbers equal the raw baseline's exactly and prints the check.
   (``folder_csv`` trains with random horizontal flips, which swap the benchmark's left and right
   motions: its top-1 is not the in-memory benchmark's. The check does not depend on it.)

Options: ``--seed``, ``--threads`` (default 1), ``--file-videos`` (train/test videos of part 2),
``--tiny`` (a smoke run of both parts in seconds).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from stprivacy import evaluate_transform
from stprivacy.attack.report import to_markdown, write_evaluation
from stprivacy.cli import main as cli
from stprivacy.commands.demo import FULL, TINY, _train_config
from stprivacy.data.synthetic import SyntheticVideos
from stprivacy.data.transforms import tensor_to_frames
from stprivacy.data.video import write_video
from stprivacy.methods.baselines import BASELINE_NAMES
from stprivacy.model import STPrivacyConfig


class MeanFrame(nn.Module):
    """An outside "anonymizer": each clip's frames replaced by their mean (no motion is left)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.mean(dim=2, keepdim=True).expand_as(video).contiguous()


def write_benchmark_files(root: Path, seed: int, counts: dict[str, int], spec: dict) -> Path:
    """``root/videos/<action>/<split>_<i>.mp4`` and ``root/labels.csv`` (video, action, split, attributes)."""
    rows = []
    for split, count in counts.items():
        dataset = SyntheticVideos(split, num_videos=count, seed=seed, **spec)
        for i in range(count):
            video, action, privacy = dataset[i]
            relative = f"{action}/{split}_{i}.mp4"
            (root / "videos" / str(action)).mkdir(parents=True, exist_ok=True)
            write_video(root / "videos" / relative, tensor_to_frames(video), fps=8)
            rows.append({"video": relative, "action": action, "split": split,
                         **dict(zip(dataset.attributes, (int(p) for p in privacy.tolist())))})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("evaluate_any"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--file-videos", type=int, nargs=2, default=(128, 64), metavar=("TRAIN", "TEST"))
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = TINY if args.tiny else FULL
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = _train_config(settings, args.seed, progress=False)

    evaluation = evaluate_transform(MeanFrame(), "synthetic", model_cfg=model_cfg, cfg=cfg, name="mean frame",
                                    baselines=BASELINE_NAMES, attackers=("video", "frame"))
    evaluation["command"] = f"python benchmarks/evaluate_any.py --seed {args.seed} --threads {args.threads}" + (
        " --tiny" if args.tiny else "")
    write_evaluation(evaluation, args.out / "synthetic")
    print(to_markdown(evaluation))

    files = args.out / "files"
    shutil.rmtree(files, ignore_errors=True)
    train_videos, test_videos = (16, 8) if args.tiny else args.file_videos
    spec = {"frames": model_cfg.frames, "size": model_cfg.image_size, "cell": model_cfg.tubelet[1]}
    labels = write_benchmark_files(files, args.seed, {"train": train_videos, "test": test_videos}, spec)
    shutil.copytree(files / "videos", files / "copy")
    clips = {"rate": 1, "train_short_side": model_cfg.image_size, "num_clips": 1, "num_crops": 1}
    file_cfg = dataclasses.replace(cfg, dataset="folder_csv", dataset_kwargs={
        "video_root": str(files / "videos"), "csv_path": str(labels), **clips})
    config = files / "run.json"
    config.write_text(json.dumps({"model": model_cfg.to_dict(), "train": file_cfg.to_dict()}))
    assert cli(["evaluate", "--config", str(config), "--baselines", "raw", "--transformed-root",
                f"copy={files / 'copy'}", "--out", str(files / "eval")]) == 0
    rows = json.loads((files / "eval" / "evaluation.json").read_text())["rows"]
    raw, copy = rows["raw"]["attackers"]["video"], rows["copy"]["attackers"]["video"]
    keys = ("top1", "f1", "cmap", "ap", "last_epoch_loss")
    print("raw vs byte copy, video attacker (exact float equality):")
    for key in keys:
        print(f"  {key}: raw {raw[key]!r} | copy {copy[key]!r} | equal: {raw[key] == copy[key]}")
    if any(raw[key] != copy[key] for key in keys):
        raise SystemExit("the byte copy did not reproduce the raw baseline")


if __name__ == "__main__":
    main()
