"""How well "Candidate new intents" gathers the messages of a topic the bot does not know, by the
cut of its grouping (`retrieval.groups.alike_groups`, `similarity`: a group's members must be
at least that alike on average), on BANKING77 train.csv (development data only).

Each draw makes the page's unmatched messages: `--per-topic` rows of each of `--topics` intents
drawn as topics the bot does not know, and `--stray` rows of the other intents (the known
questions a model declines now and then: a few of each). For each cut it prints, as medians
over the draws:

- topics shown: the unknown topics with a group that is mostly theirs, and how many such groups
  each has (an admin's clicks);
- gathered: the share of the unknown topics' messages in such groups (what "Mark these out of
  scope" on those groups takes);
- purity: the share of those groups' messages that are of their topic (the rest, the admin
  unticks);
- groups: how many groups the page lists (of 3 messages or more), and how many are mostly strays.

    .venv/bin/python benchmarks/grouping_banking77.py [--cuts 0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75]
        [--per-topic 5,20,60] [--topics 10] [--stray 200] [--draws 5]
        [--data ../shared/data/banking77] [--json benchmarks/results/grouping.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77"


def floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",")]


def ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",")]


def page_figures(labels: list[str], unknown: set[str], groups) -> dict[str, float]:
    """What the page shows for one draw: groups mostly of an unknown topic, and what they hold."""
    shown: Counter[str] = Counter()  # unknown topic -> groups mostly its own
    gathered = in_topic_groups = of_topic = strays_groups = 0
    for group in groups:
        members = [labels[i] for i in group.members]
        topic, count = Counter(members).most_common(1)[0]
        if topic in unknown and count * 2 > len(members):
            shown[topic] += 1
            gathered += count
            of_topic += count
            in_topic_groups += len(members)
        else:
            strays_groups += 1
    unknown_rows = sum(label in unknown for label in labels)
    return {
        "topics_shown": len(shown),
        "groups_per_topic": sum(shown.values()) / len(shown) if shown else float("nan"),
        "gathered": gathered / unknown_rows,
        "purity": of_topic / in_topic_groups if in_topic_groups else float("nan"),
        "groups": len(groups),
        "stray_groups": strays_groups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cuts", type=floats, default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75])
    parser.add_argument("--per-topic", type=ints, default=[5, 20, 60])
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--stray", type=int, default=200)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from retrieval.encoder import SentenceEncoder
    from retrieval.groups import alike_groups
    from training.train import default_base_model

    with open(args.data / "train.csv", newline="") as f:
        rows = [(row["text"], row["category"]) for row in csv.DictReader(f)]
    started = time.perf_counter()
    encoder = SentenceEncoder.from_pretrained(default_base_model())
    vectors = encoder.encode([text for text, _ in rows])
    print(f"encoded {len(rows)} train.csv rows in {time.perf_counter() - started:.0f} s")
    by_intent: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        by_intent.setdefault(label, []).append(i)
    intents = sorted(by_intent)

    results = []
    for per_topic in args.per_topic:
        figures: dict[float, list[dict[str, float]]] = {cut: [] for cut in args.cuts}
        for draw in range(args.draws):
            rng = random.Random(draw)
            unknown = set(rng.sample(intents, args.topics))
            picked = [
                i
                for t in sorted(unknown)
                for i in rng.sample(by_intent[t], min(per_topic, len(by_intent[t])))
            ]
            known_rows = [i for t in intents if t not in unknown for i in by_intent[t]]
            picked += rng.sample(known_rows, args.stray)
            labels = [rows[i][1] for i in picked]
            for cut in args.cuts:
                groups = alike_groups(vectors[picked], similarity=cut)
                figures[cut].append(page_figures(labels, unknown, groups))
        print(
            f"\n{args.topics} unknown topics x {per_topic} messages + {args.stray} strays "
            f"(medians over {args.draws} draws)"
        )
        print("| cut | topics shown (groups each) | gathered | purity | groups (mostly strays) |")
        print("|---|---|---|---|---|")
        for cut in args.cuts:
            med = {key: statistics.median(f[key] for f in figures[cut]) for key in figures[cut][0]}
            results.append({"per_topic": per_topic, "cut": cut, **med})
            print(
                f"| {cut:.2f} | {med['topics_shown']:g} of {args.topics} "
                f"({med['groups_per_topic']:.1f}) | "
                f"{med['gathered']:.1%} | {med['purity']:.1%} | "
                f"{med['groups']:.0f} ({med['stray_groups']:.0f}) |"
            )
    if args.json:
        settings = vars(args) | {"data": str(args.data), "json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
