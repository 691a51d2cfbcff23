"""Command line: train and score intent classifiers on CSV files, without the web app.

python -m training train --csv TRAIN.csv [--text-col text --label-col label] [--lora] --out DIR
python -m training evaluate --model DIR --csv TEST.csv [--oos-label L] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a classifier on a CSV file")
    _data_arguments(train)
    train.add_argument("--out", type=Path, required=True, help="new model directory")
    train.add_argument("--val-csv", type=Path, help="validation CSV (default: split from --csv)")
    train.add_argument("--base-model", default="", help="BERT-family checkpoint (default: MiniLM)")
    train.add_argument("--lora", action="store_true", help="train LoRA adapters (peft)")
    train.add_argument("--lora-rank", type=int)
    train.add_argument("--lora-targets", help="comma-separated module names, e.g. query,value")
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--pooling", choices=["mean", "cls"])
    train.add_argument("--no-probe-init", action="store_true", help="start from a random head")
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    train.add_argument(
        "--search-minutes",
        type=float,
        default=0,
        help="try learning rates, epochs and LoRA ranks within this budget (off by default)",
    )

    evaluate = commands.add_parser("evaluate", help="score a trained classifier on a CSV file")
    _data_arguments(evaluate)
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--oos-label", help="rows with this label are out of scope")
    evaluate.add_argument("--json", action="store_true", help="last line: the metrics as JSON")
    evaluate.add_argument(
        "--fp32", action="store_true", help="do not use bf16 or int8 even if recorded"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from retrieval.encoder import BaseModelError
    from training.data import DatasetError

    try:
        return _train(args) if args.command == "train" else _evaluate(args)
    except (DatasetError, BaseModelError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--text-col", default="text")
    parser.add_argument("--label-col", default="label")


def _train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.data import load_csv, stratified_split
    from training.pipeline import train_to_directory

    config = TrainConfig(base_model=args.base_model, lora=args.lora)
    overrides = {
        "lora_rank": args.lora_rank,
        "lora_targets": args.lora_targets.split(",") if args.lora_targets else None,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "pooling": args.pooling,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "device": args.device,
    }
    if args.lr is not None and args.lora:
        overrides["lora_lr"], overrides["lr"] = args.lr, None
    for name, value in overrides.items():
        if value is not None:
            setattr(config, name, value)
    if args.no_probe_init:
        config.probe_init = False
    examples = load_csv(args.csv, text_col=args.text_col, label_col=args.label_col)
    if args.val_csv:
        train_set = examples
        val_set = load_csv(args.val_csv, text_col=args.text_col, label_col=args.label_col)
    else:
        train_set, val_set = stratified_split(
            examples, val_fraction=config.val_fraction, seed=config.seed
        )
    metrics = train_to_directory(
        config, train_set, val_set, args.out, search_minutes=args.search_minutes
    )
    print(f"model written to {args.out}")
    summary = ("kind", "validation", "int8", "bf16", "train_seconds")
    print(json.dumps({k: metrics[k] for k in summary}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.data import check_known_labels, load_csv
    from training.evaluate import compute_metrics, policy_metrics
    from training.inference import IntentClassifier
    from training.policy import OUT_OF_SCOPE

    examples = load_csv(args.csv, text_col=args.text_col, label_col=args.label_col)
    classifier = IntentClassifier.from_dir(args.model, precision="fp32" if args.fp32 else None)
    known = {label: i for i, label in enumerate(classifier.labels)}
    check_known_labels([e for e in examples if e.label != args.oos_label], known)
    gold = [e.label for e in examples]
    decisions = classifier.decide([e.text for e in examples])
    predicted = [d.prediction.intent for d in decisions]
    if args.oos_label:
        # A message the policy declines counts as an out-of-scope prediction.
        predicted = [
            args.oos_label if d.decision == OUT_OF_SCOPE else d.prediction.intent for d in decisions
        ]
    metrics = compute_metrics(
        gold, predicted, [d.prediction.confidence for d in decisions], oos_label=args.oos_label
    )
    metrics["policy"] = policy_metrics(
        gold, [d.prediction.intent for d in decisions], [d.decision for d in decisions]
    )
    metrics["model"] = str(args.model)
    metrics["precision"] = classifier.precision
    print(f"{args.csv}: {metrics['n']} rows, {classifier.precision}")
    print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}")
    if "oos" in metrics:
        oos = metrics["oos"]
        print(
            f"out of scope ({oos['n_oos']} rows): recall {oos['recall']:.4f}, "
            f"precision {oos['precision']:.4f}; in-scope accuracy {oos['in_scope_accuracy']:.4f}"
        )
    shares = metrics["policy"]["shares"]
    print(
        f"answered {shares['answer']:.1%} (accuracy {metrics['policy']['answered_accuracy']:.4f}), "
        f"clarified {shares['clarify']:.1%}, declined {shares['out_of_scope']:.1%}"
    )
    if args.json:
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
