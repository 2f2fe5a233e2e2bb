"""Send the documented REST request (the seeds' JSON contract) and print what came back.

python scripts/example_request.py --url http://127.0.0.1:8080/ [--image PATH] [--text person]
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.request
from pathlib import Path


def sample_image() -> bytes:
    """astronaut.png shipped in the scikit-image wheel (a real photo with a person)."""
    import skimage  # noqa: PLC0415 (optional: test extra)

    return (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080/")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--text", default="person")
    parser.add_argument("--threshold", type=float, default=0.15, help="the random-weight tiny model scores ~0.1-0.2")
    args = parser.parse_args()
    image = args.image.read_bytes() if args.image else sample_image()
    body = {"image": base64.b64encode(image).decode(), "mode": "text", "text": args.text, "threshold": args.threshold}
    request = urllib.request.Request(args.url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        result = json.loads(response.read())
    print(f"POST {args.url} mode=text text={args.text!r}: count={result['count']} image_shape={result['image_shape']}")
    for box, score in list(zip(result["boxes"], result["scores"]))[:10]:
        print(f"  score {score:.3f}  box {[round(v, 1) for v in box]}")


if __name__ == "__main__":
    main()
