"""Does a lesson land on every seed? Executes a lesson's notebook once per seed (``workbench.experiments.sweep``,
the same call as ``workbench sweep``), reads each run's recorded summary back and prints, per seed, the figures
the lesson rests on and its margins, then the smallest margin over the seeds. Prints JSON lines, then a Markdown
table.

    python benchmarks/lessons.py quickstart                        # seeds 0, 1, 2 (about 3 minutes each on 2 cores)
    python benchmarks/lessons.py quickstart -p precision fp32      # the same with fp32 (bf16 vs fp32 check)
    python benchmarks/lessons.py contrastive --seeds 0 1 2 3
    python benchmarks/lessons.py semi_supervised --runs-dir runs/lessons
    python benchmarks/lessons.py latent_vs_pixel                   # tutorial 09: MAE vs I-JEPA, data2vec 2.0, NEPA

Runs go under ``--runs-dir`` (default ``runs/lessons``); completed ones are reused, so an interrupted check
resumes. A lesson "lands" on a seed when every margin is positive (each margin already subtracts the lesson's
required gap, e.g. ``knn - raw - 0.05``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Margins = Callable[[dict], dict]


def _quickstart(s: dict) -> dict:
    return {"knn - raw - 0.05": s["knn_acc"] - s["knn_acc_raw_pixels"] - 0.05,
            "knn - random - 0.05": s["knn_acc"] - s["knn_acc_random_init"] - 0.05,
            "linear - raw - 0.05": s["linear_acc"] - s["linear_acc_raw_pixels"] - 0.05,
            "linear - random - 0.05": s["linear_acc"] - s["linear_acc_random_init"] - 0.05}


def _contrastive(s: dict) -> dict:
    return {"knn - random - 0.10": s["knn_acc"] - s["knn_acc_random_init"] - 0.10}


def _semi_supervised(s: dict) -> dict:
    return {"1% pretrained - scratch": s["finetune_top1_1pct_pretrained"] - s["finetune_top1_1pct_scratch"],
            "10% pretrained - scratch": s["finetune_top1_10pct_pretrained"] - s["finetune_top1_10pct_scratch"]}


def _dino(s: dict) -> dict:
    """Tutorial 05's lesson: the last-layer head chosen on half the test images puts >= 1.5x the uniform share of
    its attention on the object of the other half (the mean over heads is shown beside it, not required)."""
    return {"held-out head / uniform - 1.5":
            s["attention_share_heldout_head_trained"] / s["attention_share_uniform_heldout"] - 1.5}


def _latent_vs_pixel(s: dict) -> dict:
    """The comparison tutorial 09 concludes on: the best latent-target method minus MAE, per probe."""
    return {f"best latent - mae ({m})": s[f"best_latent_minus_mae_{m}"] for m in ("knn", "linear")}


# lesson -> (notebook, summary keys shown, margins)
LESSONS: dict[str, tuple[str, list[str], Margins]] = {
    "quickstart": ("00_quickstart.ipynb",
                   ["knn_acc", "knn_acc_random_init", "knn_acc_raw_pixels", "linear_acc", "linear_acc_random_init",
                    "linear_acc_raw_pixels"], _quickstart),
    "contrastive": ("tutorial_02_contrastive.ipynb", ["knn_acc", "knn_acc_random_init", "knn_acc_raw_pixels"],
                    _contrastive),
    "semi_supervised": ("tutorial_07_semi_supervised.ipynb",
                        ["finetune_top1_1pct_pretrained", "finetune_top1_1pct_scratch",
                         "finetune_top1_10pct_pretrained", "finetune_top1_10pct_scratch"], _semi_supervised),
    "dino": ("tutorial_05_dino_attention.ipynb",
             ["attention_share_trained", "attention_share_random_init", "attention_share_uniform",
              "attention_share_heldout_head_trained", "attention_share_heldout_head_random_init",
              "attention_share_uniform_heldout"], _dino),
    "latent_vs_pixel": ("tutorial_09_latent_vs_pixel.ipynb",
                        [f"{metric}_{model}" for model in ("mae", "ijepa", "data2vec2", "nepa", "random_init")
                         for metric in ("knn", "linear", "rankme")], _latent_vs_pixel),
}


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lesson", choices=sorted(LESSONS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter for every seed, parsed to its default's type as `workbench sweep -p` does")
    ap.add_argument("--runs-dir", default="runs/lessons")
    args = ap.parse_args()

    from workbench.config import ConfigError
    from workbench.experiments import sweep
    from workbench.runs import Run

    notebook, keys, margins = LESSONS[args.lesson]
    fixed = dict(args.parameter)
    try:
        table = sweep(notebook, {"seed": args.seeds}, runs_dir=args.runs_dir, parameters=fixed, coerce_strings=True,
                      progress=print)
    except ConfigError as e:  # a parameter the notebook does not have, or of the wrong type: nothing ran
        print(f"lessons.py: {e}", file=sys.stderr)
        return 2
    rows = []
    for _, row in table.iterrows():
        if row["status"] != "completed":
            print(json.dumps({"lesson": args.lesson, "seed": int(row["seed"]), "status": row["status"],
                              "error": row.get("error")}), flush=True)
            continue
        summary = Run(row["run"]).summary
        m = margins(summary)
        rec = {"lesson": args.lesson, "seed": int(row["seed"]), "parameters": fixed, "run": str(row["run"]),
               **{k: summary.get(k) for k in keys}, **{f"margin: {k}": v for k, v in m.items()},
               "lands": all(v > 0 for v in m.values())}
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    if not rows:
        return 1
    cols = ["seed", *keys, *[k for k in rows[0] if k.startswith("margin: ")], "lands"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    worst = {c: min(r[c] for r in rows) for c in cols if c.startswith("margin: ")}
    print("| smallest | " + " | ".join("" for _ in keys) + " | " + " | ".join(_fmt(v) for v in worst.values())
          + f" | {all(r['lands'] for r in rows) and len(rows) == len(args.seeds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
