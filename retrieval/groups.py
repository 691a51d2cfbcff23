"""Groups of alike messages, and the other messages that would have joined them.

"Candidate new intents" in the review queue and the learning-loop benchmark read the same
functions, so what the benchmark measures is what an admin is shown. Vectors are unit rows
(`SentenceEncoder.encode`): inner product is cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOOK_ALIKES_SHOWN = 10  # under each group, the most alike first
# The cut: a group's members are at least this alike on average (mean cosine), and so is a
# look-alike to them. Chosen on BANKING77 train.csv (`benchmarks/grouping_banking77.py`): of the
# cuts from 0.45 to 0.7, 0.6 best balanced the share of unknown topics' messages gathered into
# groups mostly of their topic and the share of those groups' messages that are of it, with 5,
# 20 and 60 messages a topic among 200 others (0.5 gathered about as many, and left 1.6 to 2.4
# times as many to untick).
GROUP_SIMILARITY = 0.6


@dataclass(frozen=True)
class Group:
    members: np.ndarray  # rows of the grouped vectors, closest to the group's centre first
    look_alikes: np.ndarray  # rows of the other vectors, most alike first
    look_alike_similarity: np.ndarray  # each one's mean cosine to the members


def alike_groups(
    vectors: np.ndarray,
    others: np.ndarray | None = None,
    *,
    min_size: int = 3,
    similarity: float = GROUP_SIMILARITY,
) -> list[Group]:
    """Average-linkage groups of `vectors`, cut where a group's members stop being at least
    `similarity` alike on average; groups under `min_size` are left out; largest first.

    Each row of `others` joins, as a look-alike, the group it is most alike on average, when
    that mean cosine to the members reaches `similarity`: the row would have been merged into
    the group, by the same rule, had it been among `vectors`."""
    if len(vectors) < max(min_size, 2):
        return []
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1 - similarity
    ).fit_predict(vectors)
    kept = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    kept = sorted((m for m in kept if len(m) >= min_size), key=lambda m: (-len(m), m[0]))
    if not kept:
        return []
    centres = np.stack([vectors[m].mean(axis=0) for m in kept])
    if others is None or not len(others):
        best = np.zeros(0, dtype=int)
        score = np.zeros(0, dtype=np.float32)
    else:
        # The mean cosine of a row to a group's members is its inner product with their mean.
        alike = others @ centres.T
        best = alike.argmax(axis=1)
        score = alike[np.arange(len(others)), best]
    groups = []
    for g, members in enumerate(kept):
        joined = np.flatnonzero((best == g) & (score >= similarity))
        joined = joined[np.argsort(-score[joined], kind="stable")]
        groups.append(
            Group(
                members=members[np.argsort(-(vectors[members] @ centres[g]), kind="stable")],
                look_alikes=joined,
                look_alike_similarity=score[joined],
            )
        )
    return groups
