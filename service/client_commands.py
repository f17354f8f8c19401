"""`masenet detect` and `masenet submit`: the service's client from the command line (service.client).

    masenet detect a.png b.tiff --url http://host:8000 [--gradcam DIR]   one JSON line per frame
    masenet submit clip.mp4 --url http://host:8000 --wait [--annotate --video-out out.mp4 --out result.json]

Both take the key from --api-key or MASENET_API_KEY and show a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `detect` and `submit`."""
    detect = subparsers.add_parser("detect", help="send frames to a running service and print its detections")
    detect.add_argument("paths", nargs="+", type=Path, help="frames (PNG, JPEG, TIFF, BMP; 8 or 16 bit)")
    _add_connection(detect)
    _add_inference(detect)
    detect.add_argument("--batch", type=int, default=8, help="frames per request (default 8)")
    detect.add_argument("--gradcam", type=Path, default=None, metavar="DIR", help="also write Grad-CAM overlays here")
    detect.set_defaults(func=run_detect)

    submit = subparsers.add_parser("submit", help="send a video to a running service as a job")
    submit.add_argument("video", type=Path, help="the recording (MP4, MKV, AVI, ...)")
    _add_connection(submit)
    _add_inference(submit)
    submit.add_argument("--frame-stride", type=int, default=None, help="process every Nth frame")
    submit.add_argument("--no-track", action="store_true", help="no track ids")
    submit.add_argument("--annotate", action="store_true", help="also render an annotated MP4")
    submit.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    submit.add_argument("--out", type=Path, default=None, help="with --wait: write the result JSON here")
    submit.add_argument("--video-out", type=Path, default=None, help="with --wait --annotate: write the MP4 here")
    submit.set_defaults(func=run_submit)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    url = os.environ.get("MASENET_URL", DEFAULT_URL)
    parser.add_argument("--url", default=url, help=f"the service (MASENET_URL, default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get("MASENET_API_KEY"), help="bearer key (MASENET_API_KEY)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")


def _add_inference(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", type=float, default=None, help="score threshold (service default 0.25)")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU threshold")
    parser.add_argument("--pixel-scale", type=float, default=None, help="resize factor (default: the model's)")
    parser.add_argument("--imgsz", type=int, default=None, help="a fixed longer side instead of the pixel scale")
    parser.add_argument("--tta", choices=("off", "mirror", "flips"), default=None, help="test-time augmentation")


def _inference(args: argparse.Namespace) -> dict[str, object]:
    return {"conf": args.conf, "iou": args.iou, "pixel_scale": args.pixel_scale, "imgsz": args.imgsz, "tta": args.tta}


def run_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.client import Client

    missing = [str(path) for path in args.paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no such file: {', '.join(missing)}")
    if args.gradcam is not None:
        args.gradcam.mkdir(parents=True, exist_ok=True)
    with (
        Client(args.url, api_key=args.api_key, timeout=args.timeout) as client,
        tqdm(total=len(args.paths), unit="frame", file=sys.stderr, disable=len(args.paths) < 2) as bar,
    ):
        for start in range(0, len(args.paths), max(1, args.batch)):
            paths = args.paths[start : start + max(1, args.batch)]
            answer = client.detect(paths, gradcam=args.gradcam is not None, **_inference(args))
            for path, result in zip(paths, answer.results, strict=True):
                if result.gradcam is not None:
                    (args.gradcam / f"{path.stem}.gradcam.png").write_bytes(base64.b64decode(result.gradcam))
                line = result.model_dump(exclude={"gradcam", "preview"}) | {"path": str(path)}
                print(json.dumps(line), flush=True)
            bar.update(len(paths))
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.client import Client

    params = _inference(args) | {"frame_stride": args.frame_stride, "annotate": args.annotate or None}
    if args.no_track:
        params["track"] = False
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        accepted = client.submit_video(args.video, **params)
        print(json.dumps(accepted.model_dump()), flush=True)
        if not args.wait:
            return 0
        with tqdm(unit="frame", file=sys.stderr, desc=accepted.job_id[:8]) as bar:

            def progress(state) -> None:  # noqa: ANN001 (a JobState)
                bar.total = state.progress.frames_total or None
                bar.n = state.progress.frames_done
                bar.set_postfix_str(state.status.value)
                bar.refresh()

            state = client.wait(accepted.job_id, progress=progress)
        result = client.result(accepted.job_id)
        if args.out is not None:
            args.out.write_text(result.model_dump_json(indent=1))
        if args.annotate and args.video_out is not None:
            client.annotated_video(accepted.job_id, args.video_out)
        found = sum(len(frame.detections) for frame in result.frames)
        tracks = {d.track_id for frame in result.frames for d in frame.detections if d.track_id is not None}
        summary = {"job_id": state.job_id, "status": state.status.value, "frames": len(result.frames)}
        print(json.dumps(summary | {"detections": found, "tracks": len(tracks)}), flush=True)
    return 0
