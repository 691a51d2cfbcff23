"""Groups of alike messages and their look-alikes: the rule is average linkage's own."""

from __future__ import annotations

import numpy as np

from retrieval.groups import alike_groups


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_a_row_joins_the_group_it_would_have_been_merged_into() -> None:
    # given: three alike rows along x, two along y (too few for a group), and other rows
    grouped = np.stack(
        [unit(1, 0.1, 0), unit(1, 0, 0.1), unit(1, 0.05, 0.05), unit(0, 1, 0), unit(0, 1, 0.1)]
    )
    others = np.stack(
        [
            unit(1, 0.3, 0),  # alike: joins
            unit(0.2, 1, 0),  # like the two along y, which make no group
            unit(1, 1, 1),  # mean cosine about 0.6: joins, after the first
            unit(0.3, 0, 1),  # mean cosine under 0.5: does not
        ]
    )

    # when
    [group] = alike_groups(grouped, others, min_size=3, similarity=0.5)

    # then
    assert sorted(group.members) == [0, 1, 2]
    assert group.members[0] == 2  # the closest to the centre first
    assert list(group.look_alikes) == [0, 2]
    expected = [float((grouped[:3] @ others[i]).mean()) for i in (0, 2)]
    assert np.allclose(group.look_alike_similarity, expected, atol=1e-6)
    assert (group.look_alike_similarity >= 0.5).all()
    assert (grouped[:3] @ others[3]).mean() < 0.5


def test_each_look_alike_joins_one_group_only_and_groups_come_largest_first() -> None:
    x = [unit(1, 0.1 * i, 0) for i in range(3)]
    y = [unit(0, 1, 0.1 * i) for i in range(4)]
    between = unit(1, 1.2, 0)  # alike to both, more to y
    [first, second] = alike_groups(np.stack(x + y), np.stack([between]), similarity=0.5)
    assert (len(first.members), len(second.members)) == (4, 3)
    assert (list(first.look_alikes), list(second.look_alikes)) == ([0], [])
    assert alike_groups(np.stack(x[:2]), None) == []
