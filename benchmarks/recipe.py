"""Does the default training recipe learn? Several data seeds, the previous recipe and the default one.

Usage: python -m medge.benchmarks.recipe --out runs/recipe                      # before and after, seeds 1-4
       python -m medge.benchmarks.recipe --out runs/recipe --recipes after --seeds 5 6 7
       python -m medge.benchmarks.recipe --out runs/recipe --screened base base-rot0 --readme benchmarks/results/README.md

For each seed S, a synthetic set exactly as ``medge synth D --n 400 --size 256
--seed S`` writes it (the demo uses seed 0, so the default seeds leave it out),
then for each recipe the run ``medge train --data D --img-size 128 --epochs 8``
makes with that recipe's settings, on the CPU with training seed 0. Per run:
validation accuracy of the checkpoint kept (best.pt, chosen by AUC as by
default; what export ships), of the last epoch and the best over all epochs, its
AUC, test accuracy, the range of validation loss over the second half of the run
(how unstable the end of training is) and the time.

Runs are ordinary run folders under OUT/runs; a finished one is reused, not
retrained, and a stopped one is resumed, so the script can be stopped, started
again and given more seeds or recipes. It writes OUT/recipe.json (the record,
with the environment) and OUT/recipe.md (the table); both are regenerated from
all finished runs of the chosen recipes and seeds. Takes minutes per run on a
CPU: a benchmark, never a test.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

# name -> (what it is, TrainConfig fields that differ from today's defaults). "base" is the first
# candidate (cosine, warm-up, BN recalibration on the 0.2 augmentation); the others change one thing
# of it at a time, in the order they were tried; "after" is today's defaults.
OLD_AUGMENT = {"rotate_deg": 15.0, "weight_decay": 0.0}
RECIPES = {
    "before": ("medge 0.2: constant lr, no warm-up, no BN recalibration, rotation 15",
               {"schedule": "none", "warmup_epochs": 0.0, "bn_recalibration": 0, **OLD_AUGMENT}),
    "base": ("cosine per step, 1 epoch warm-up, BN recalibration; rotation 15, no weight decay", OLD_AUGMENT),
    "base-lr3e-4": ("base with Adam lr 3e-4", {**OLD_AUGMENT, "lr": 3e-4}),
    "base-rot5": ("base with rotation 5", {"rotate_deg": 5.0, "weight_decay": 0.0}),
    "base-rot0": ("base without rotation", {"weight_decay": 0.0}),
    "base-rot0-zeroinit": ("base without rotation, zero-initialised residual branches",
                           {"weight_decay": 0.0, "zero_init_residual": True}),
    "base-rot0-nowarmup": ("base without rotation or warm-up", {"weight_decay": 0.0, "warmup_epochs": 0.0}),
    "after": ("today's defaults: base without rotation, with Adam weight decay 5e-4", {}),
}
DATA = {"n": 400, "size": 256}  # medge synth D --n 400 --size 256 --seed S
TRAIN = {"img_size": 128, "epochs": 8}  # medge train --data D --img-size 128 --epochs 8
TARGET = 0.85  # validation accuracy the default recipe must reach on every seed


def make_data(root: Path, seed: int) -> Path:
    """The synthetic set of ``seed`` in ROOT/s<seed>, reused when it is there already."""
    from medge.train.synth import SynthConfig, generate

    folder = root / f"s{seed}"
    cfg = SynthConfig(n=DATA["n"], size=DATA["size"], seed=seed)
    meta = folder / "synth.json"
    if meta.is_file() and json.loads(meta.read_text())["config"] == dataclasses.asdict(cfg):
        return folder
    generate(folder, cfg)
    return folder


def recipe_config(name: str, data: Path, out: Path, cache: Path, train_seed: int):
    from medge.train.config import TrainConfig

    return TrainConfig(data=str(data), out=str(out), epochs=TRAIN["epochs"], device="cpu", seed=train_seed,
                       cache_dir=str(cache), **RECIPES[name][1])


def train_or_reuse(cfg, img_size: int, log) -> float:
    """Train the run in cfg.out (resume it if stopped, reuse it if finished); returns the seconds spent now."""
    from medge.edge.errors import UsageError
    from medge.edge.preprocess import PreprocessConfig
    from medge.train.engine import ResumeOptions, resume, train

    out = Path(cfg.out)
    t0 = time.perf_counter()
    if (out / "last.pt").is_file():
        stored = json.loads((out / "config.json").read_text())["train"]
        mine = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "data", "cache_dir", "workers")}
        if {k: stored.get(k, v) for k, v in mine.items()} != mine:  # a key newer than the run: its default
            raise UsageError(f"{out} holds a run with other settings; remove it or choose another --out")
        log(f"{out.name}: resuming or reusing")
        resume(ResumeOptions(str(out)))
    else:
        log(f"{out.name}: training")
        train(cfg, PreprocessConfig(size=img_size))
    return time.perf_counter() - t0


def run_result(out: Path) -> dict:
    """The figures of one finished run, from its metrics.jsonl and summary.json."""
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    val = [h["val"] for h in history]
    late = [v["loss"] for v in val[len(val) // 2:]]
    return {
        "kept_epoch": summary["best"]["epoch"], "val_accuracy_kept": summary["val"]["accuracy"],
        "val_auc_kept": summary["val"]["auc"], "val_accuracy_last": val[-1]["accuracy"],
        "val_accuracy_max": max(v["accuracy"] for v in val),
        "test_accuracy": summary.get("test", {}).get("accuracy"),
        "val_loss": [v["loss"] for v in val], "val_accuracy": [v["accuracy"] for v in val],
        "late_val_loss_range": max(late) - min(late),
        "train_seconds": sum(h["time_s"] for h in history),
    }


def aggregate(rows: list[dict]) -> dict:
    kept = [r["val_accuracy_kept"] for r in rows]
    return {"runs": len(rows), "min": min(kept), "mean": sum(kept) / len(kept),
            "reached_target": sum(k >= TARGET for k in kept), "last_min": min(r["val_accuracy_last"] for r in rows),
            "max_min": min(r["val_accuracy_max"] for r in rows),
            "test_mean": sum(r["test_accuracy"] or 0 for r in rows) / len(rows),
            "late_val_loss_range_max": max(r["late_val_loss_range"] for r in rows),
            "minutes_per_run": sum(r["train_seconds"] for r in rows) / len(rows) / 60}


def run_recipes(out: Path, recipes: list[str], seeds: list[int], train_seed: int = 0, log=print,
                screened: tuple = ()) -> dict:
    """Train (or reuse) every recipe on every seed; returns the record.

    ``screened`` recipes are never trained here: their finished runs in OUT (candidates
    tried on some seeds only) are reported beside the others.
    """
    import torch

    from medge.benchmarks.common import environment
    from medge.train.config import TrainConfig

    results: dict[str, dict] = {}
    for seed in seeds:
        data = make_data(out / "data", seed)
        for name in recipes:
            run_dir = out / "runs" / f"{name}-s{seed}-t{train_seed}"
            train_or_reuse(recipe_config(name, data, run_dir, out / "cache", train_seed), TRAIN["img_size"], log)
            results.setdefault(name, {})[str(seed)] = run_result(run_dir)
            log(f"{run_dir.name}: val accuracy {results[name][str(seed)]['val_accuracy_kept']:.3f} (kept checkpoint)")
        for name in screened:
            run_dir = out / "runs" / f"{name}-s{seed}-t{train_seed}"
            if (run_dir / "summary.json").is_file():
                train_or_reuse(recipe_config(name, data, run_dir, out / "cache", train_seed), TRAIN["img_size"], log)
                results.setdefault(name, {})[str(seed)] = run_result(run_dir)
    names = [n for n in RECIPES if n in results]  # the order of RECIPES: the order they were tried
    return {"benchmark": "medge recipe", "target_val_accuracy": TARGET, "data": {**DATA, "seeds": seeds},
            "train": {**TRAIN, "seed": train_seed, "device": "cpu", "torch_threads": torch.get_num_threads(),
                      "defaults": TrainConfig().to_dict()},
            "recipes": {n: {"about": RECIPES[n][0], "changes": RECIPES[n][1], "screened": n in screened,
                            "runs": results[n], "summary": aggregate(list(results[n].values()))} for n in names},
            "env": environment()}


def markdown(record: dict) -> str:
    """The record as a Markdown table (generated, never typed by hand)."""
    seeds = [str(s) for s in record["data"]["seeds"]]
    t = record["train"]
    lines = [f"`medge train --data D --img-size {t['img_size']} --epochs {t['epochs']}` on "
             f"`medge synth D --n {record['data']['n']} --size {record['data']['size']} --seed S` (280 train, 80 val, "
             f"40 test images), CPU, training seed {t['seed']}. Validation accuracy of the kept checkpoint "
             "(best.pt, by AUC), last epoch in brackets:", "",
             "| recipe | " + " | ".join(f"seed {s}" for s in seeds)
             + f" | min | mean | runs >= {record['target_val_accuracy']} | best epoch, min | test acc. mean "
             "| late val-loss range | min/run |",
             "| --- |" + " ---: |" * (len(seeds) + 7)]
    for name, r in record["recipes"].items():
        cells = [f"{r['runs'][s]['val_accuracy_kept']:.3f} ({r['runs'][s]['val_accuracy_last']:.3f})"
                 if s in r["runs"] else "-" for s in seeds]
        a = r["summary"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {a['min']:.3f} | {a['mean']:.3f} | "
                     f"{a['reached_target']}/{a['runs']} | {a['max_min']:.3f} | {a['test_mean']:.3f} | "
                     f"{a['late_val_loss_range_max']:.2f} | {a['minutes_per_run']:.1f} |")
    lines += [""] + [f"- **{name}**: {r['about']}"
                     + (" (" + ", ".join(f"`{k}={v}`" for k, v in r["changes"].items()) + ")" if r["changes"] else "")
                     for name, r in record["recipes"].items()]
    env = record["env"]
    lines += ["", f"Machine: {env['cpu']}, {env['cores']} cores, torch {env.get('torch')} with {t['torch_threads']} "
              f"thread(s); git {env.get('git_revision')}. Best epoch, min: the lowest over the seeds of the best "
              "validation accuracy any epoch reached. Late val-loss range: the largest spread of validation loss "
              "over epochs 5-8 among the seeds. Minutes per run on a machine shared with other work."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from medge.benchmarks.common import research_parser

    p = research_parser(__doc__)
    p.add_argument("--out", default="runs/recipe", help="folder for data, runs and the record (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["before", "after"],
                   help="default: %(default)s")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="data seeds (default: %(default)s)")
    p.add_argument("--train-seed", type=int, default=0, help="training seed (default: %(default)s, as medge train)")
    p.add_argument("--screened", nargs="+", choices=list(RECIPES), default=[],
                   help="also report these recipes' finished runs in OUT (candidates tried on some seeds; not trained)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default: %(default)s, so that a rerun on the same machine gives the "
                        "same figures; on 2 cores run two at once with different --seeds)")
    p.add_argument("--readme", help="also replace the recipe section of this README (between recipe markers)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from medge.edge.outputs import atomic_write_text, wrote

    out = Path(a.out)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    record = run_recipes(out, a.recipes, a.seeds, a.train_seed, log, tuple(a.screened))
    text = markdown(record)
    atomic_write_text(out / "recipe.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "recipe.md", text + "\n")
    wrote(out / "recipe.json", "record")
    wrote(out / "recipe.md", "table")
    if a.readme:
        from medge.benchmarks.report import replace_section

        command = " ".join(["python -m medge.benchmarks.recipe", *(argv if argv is not None else sys.argv[1:])])
        replace_section(Path(a.readme), "recipe", text, command)
        wrote(a.readme)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
