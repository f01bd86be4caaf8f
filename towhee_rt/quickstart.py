"""The quick-start job: build the seed's image pipeline, serve it, query it, compare with local.

    python -m towhee_rt.quickstart [--images DIR] [--model-name resnet50] [--repo DIR]

1. builds ``image_decode.cv2_rgb -> image_embedding.timm(model_name)`` (random weights: no
   model hub here) and runs it locally on every image;
2. writes it as a Triton model repository and serves it on the embedded tritonserver;
3. sends the images over gRPC and prints one row per file (shape, latency, max relative error
   between the served and the local vector), plus the named error of every bad image;
4. stops the server. Exits non-zero if a served vector differs from its local one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "images"
TOLERANCE = 1e-5


def max_relative_error(served: np.ndarray, local: np.ndarray) -> float:
    """max |served - local| / max |local| (0 when both are zero)."""
    scale = float(np.max(np.abs(local))) or 1.0
    return float(np.max(np.abs(served - local))) / scale


def main(argv: Optional[List[str]] = None) -> int:
    import towhee_rt as towhee
    from towhee_rt.errors import ItemError
    from towhee_rt.serve import serve

    parser = argparse.ArgumentParser(prog="python -m towhee_rt.quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder with good/ and bad/ (default: shared/testdata/images)")
    parser.add_argument("--model-name", default="resnet50", help="timm model (default resnet50)")
    parser.add_argument("--repo", type=Path, default=None,
                        help="where to write the repository (default: a temporary folder)")
    args = parser.parse_args(argv)

    good = sorted((args.images / "good").glob("*"))
    bad = sorted((args.images / "bad").glob("*"))
    if not good:
        parser.error(f"no images in {args.images / 'good'}")
    pipe = (towhee.dummy_input()
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name=args.model_name)
            .as_function())
    print(f"pipeline: {pipe}")
    local = pipe([str(p) for p in good])

    with tempfile.TemporaryDirectory(prefix="towhee_rt-quickstart-") as tmp:
        repo_dir = args.repo or Path(tmp) / "repo"
        repo = towhee.build_model_repo(pipe, repo_dir, overwrite=True)
        print(f"repository: {repo.path} (models: {', '.join(repo.model_names)})")
        with serve(repo.path, grpc_port=0, http_port=0, metrics_port=0) as server:
            print(f"tritonserver ready: grpc {server.grpc_url}, http {server.http_url}")
            worst = _query_and_print(towhee, server.grpc_url, good, local)
            outcomes = towhee.dc([str(p) for p in good[:1] + bad]).remote(
                url=server.grpc_url, mode="async_infer", protocol="grpc", errors="return")
            print("\nmixed request (1 good + bad files):")
            for path, outcome in zip(good[:1] + bad, outcomes):
                shown = outcome if isinstance(outcome, ItemError) else f"vector {outcome.shape}"
                print(f"  {path.name:<26} {shown}")
            print(f"server still ready: {server.models_ready()}")
    print(f"\nmax relative error served vs local: {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


def _query_and_print(towhee, url: str, files: List[Path], local: List[np.ndarray]) -> float:
    print(f"\n{'file':<26} {'shape':>8} {'norm':>9} {'ms':>8} {'max rel err':>12}")
    worst = 0.0
    for path, expected in zip(files, local):
        start = time.perf_counter()
        (vector,) = towhee.dc([str(path)]).remote(url=url, mode="infer", protocol="grpc")
        ms = (time.perf_counter() - start) * 1000
        err = max_relative_error(vector, expected)
        worst = max(worst, err)
        print(f"{path.name:<26} {str(vector.shape):>8} {np.linalg.norm(vector):9.3f} "
              f"{ms:8.1f} {err:12.2e}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
