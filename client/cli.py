"""`sam3-client`: segment one image with a running SAM3 server (benchmark and soak: `sam3-bench`).

    sam3-client segment photo.jpg --text person --text car --out overlay.png --json result.json
    sam3-client segment photo.jpg --point 320,240 --point 100,80,0 --out overlay.png
    sam3-client segment photo.jpg --box 10,20,200,300 --out overlay.png
    sam3-client segment photo.jpg --text cup --box 10,20,200,300,1 --out overlay.png   # exemplar box
    sam3-client segment photo.jpg --auto --out overlay.png

The mode comes from the flags: --text → text (concepts; any --box are exemplar boxes with an
optional 5th value LABEL 1 positive / 0 negative), else --box → box (one object per box; any
--point join every box), else --point → point (all points are ONE object; X,Y[,LABEL] with LABEL
1 foreground / 0 background), else --auto → everything. --auto combines with nothing; --text
with --point is rejected. Coordinates are pixels of the original image.

Prints a table (index, label, score, box x0,y0,x1,y1 px, area px). --out writes the overlay
PNG, --json the result as Segmentation.to_json() (keys: image_shape, mode, concepts, count,
detections[index, label, name, score, box, iou_scores, stability_score, area, mask{size, counts}]).
Exit status: 0 done, 1 the request failed (message on stderr), 2 bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from client.api import INPUT_SPECS, PROTOCOLS, Sam3Client, Sam3Error
from client.images import load_image_rgb
from client.overlay import draw_overlay
from client.results import Segmentation

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
# Flags that set a `sam3` input: (input name, type, meaning); defaults come from the spec (sam3_spec.py).
SPEC_FLAGS = (
    ("threshold", float, "text mode detection score threshold"),
    ("mask_threshold", float, "mask binarization threshold"),
    ("points_per_side", int, "auto mode grid side"),
    ("pred_iou_thresh", float, "auto mode predicted-IoU filter"),
    ("stability_score_thresh", float, "auto mode stability filter"),
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sam3-client`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_segment(args, segment_request(args, args.parser))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{segment}")
    seg = sub.add_parser("segment", help="segment one image and draw the result")
    _add_segment_args(seg)
    seg.set_defaults(parser=seg)  # flag conflicts are reported with the segment usage
    return parser


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="image file (JPEG, PNG, WebP, ...)")
    p.add_argument("--text", action="append", default=[], help="concept to find (repeat for several)")
    p.add_argument(
        "--point",
        action="append",
        default=[],
        type=_numbers(2, 3, "X,Y[,LABEL]"),
        metavar="X,Y[,LABEL]",
        help="click in px; LABEL 1 fg (default) / 0 bg (repeat)",
    )
    p.add_argument(
        "--box",
        action="append",
        default=[],
        type=_numbers(4, 5, "X0,Y0,X1,Y1[,LABEL]"),
        metavar="X0,Y0,X1,Y1[,LABEL]",
        help="box in px (repeat); LABEL only for exemplars with --text",
    )
    p.add_argument("--auto", action="store_true", help="segment everything (a grid of clicks)")
    for name, kind, what in SPEC_FLAGS:
        default = INPUT_SPECS[name].default
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=f"{what} ({default})")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="grpc (default) or http")
    p.add_argument("--url", help="server host:port (default 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    p.add_argument("--out", type=Path, help="write the overlay PNG here")
    p.add_argument("--json", type=Path, help="write the result JSON (masks as COCO RLE) here")


def _numbers(low: int, high: int, form: str):
    """argparse type: 'a,b,c' → floats, between ``low`` and ``high`` of them."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not {form} (comma-separated numbers)") from err
        if not low <= len(values) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {form}: {len(values)} numbers")
        return values

    return parse


def segment_request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The mode and its Sam3Client.segment fields from the flags (parser.error on conflicts)."""
    if args.auto and (args.text or args.point or args.box):
        parser.error("--auto segments everything: use it without --text, --point or --box")
    if args.text and args.point:
        parser.error("--point does not combine with --text: text mode takes concepts and exemplar --box")
    if not (args.text or args.point or args.box or args.auto):
        parser.error("say what to segment: --text CONCEPT, --point X,Y, --box X0,Y0,X1,Y1 or --auto")
    if args.box and not args.text and any(len(b) == 5 for b in args.box):
        parser.error("a box LABEL (5th value) only applies to exemplar boxes in text mode (with --text)")
    if args.text:
        return _text_request(args)
    if args.box:
        return {"mode": "box", "boxes": args.box, **_points(args.point), "mask_threshold": args.mask_threshold}
    if args.point:
        return {"mode": "point", **_points(args.point), "mask_threshold": args.mask_threshold}
    return {
        "mode": "auto",
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "mask_threshold": args.mask_threshold,
    }


def _text_request(args: argparse.Namespace) -> dict:
    boxes = [b[:4] for b in args.box] or None
    labels = [int(b[4]) if len(b) == 5 else 1 for b in args.box] or None
    return {
        "mode": "text",
        "text": args.text,
        "boxes": boxes,
        "box_labels": labels,
        "threshold": args.threshold,
        "mask_threshold": args.mask_threshold,
    }


def _points(points: list[list[float]]) -> dict:
    if not points:
        return {}
    return {"points": [p[:2] for p in points], "point_labels": [int(p[2]) if len(p) == 3 else 1 for p in points]}


def run_segment(args: argparse.Namespace, request: dict) -> int:
    """Send the request, print the table, write --out / --json; 1 with a message when it fails."""
    url = args.url or DEFAULT_URLS[args.protocol]
    fields = dict(request)
    mode = fields.pop("mode")
    try:
        with Sam3Client(url, args.protocol, timeout_s=args.timeout) as client:
            seg = client.segment(args.image, mode, **fields)
    except (Sam3Error, OSError, ValueError) as err:
        print(f"sam3-client: error: {err}", file=sys.stderr)
        return 1
    print(summary_table(seg))
    _write_outputs(args, seg, fields)
    return 0


def _write_outputs(args: argparse.Namespace, seg: Segmentation, fields: dict) -> None:
    if args.out is not None:
        overlay = draw_overlay(
            load_image_rgb(args.image),
            seg,
            points=fields.get("points"),
            point_labels=fields.get("point_labels"),
            prompt_boxes=fields.get("boxes"),
        )
        overlay.save(args.out, "PNG")
        print(f"overlay: {args.out}")
    if args.json is not None:
        args.json.write_text(json.dumps(seg.to_json(masks="rle")))
        print(f"json: {args.json}")


def summary_table(seg: Segmentation) -> str:
    """One line per detection: index, label, score, box x0,y0,x1,y1 px, mask area px."""
    h, w = seg.image_shape
    lines = [
        f"{len(seg)} detection(s), mode {seg.mode}, image {w}x{h} (w x h)",
        f"{'#':>3}  {'label':<16} {'score':>6}  {'box x0,y0,x1,y1':<24} {'area':>8}",
    ]
    for i in range(len(seg)):
        box = ",".join(f"{v:.0f}" for v in seg.boxes[i])
        lines.append(f"{i:>3}  {seg.label_name(i)[:16]:<16} {float(seg.scores[i]):>6.3f}  {box:<24} {seg.area(i):>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
