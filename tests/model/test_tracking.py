"""The tiny-target tracker: identity through crossings, gaps, serialisation and class boundaries."""

from __future__ import annotations

import json

import numpy as np

from model.tracking import Tracker, TrackerConfig, greedy_match, track_sequence


def detection(cx: float, cy: float, size: float = 3.0, class_id: int = 0) -> dict:
    half = size / 2
    return {"box": [cx - half, cy - half, cx + half, cy + half], "score": 0.9, "class_id": class_id}


def ids_per_target(ids: list[list[int | None]], owners: list[list[str]]) -> dict[str, set[int | None]]:
    """Which track ids each true target received over the sequence."""
    seen: dict[str, set[int | None]] = {}
    for frame_ids, frame_owners in zip(ids, owners, strict=True):
        for track_id, owner in zip(frame_ids, frame_owners, strict=True):
            seen.setdefault(owner, set()).add(track_id)
    return seen


def crossing_sequence(frames: int = 30) -> tuple[list[list[dict]], list[list[str]]]:
    """Two targets on an X, one pixel apart when they pass; at frame 15 they blur into one detection."""
    sequence, owners = [], []
    for t in range(frames):
        a = (10 + 3.0 * t, 20 + 2.0 * t)
        b = (100 - 3.0 * t, 21 + 2.0 * t)
        if t == 15:
            sequence.append([detection(55, 50.5)])
            owners.append(["merged"])
            continue
        # Alternate the order so that list position cannot carry the identity.
        pair = [("a", a), ("b", b)] if t % 2 else [("b", b), ("a", a)]
        sequence.append([detection(*centre) for _, centre in pair])
        owners.append([name for name, _ in pair])
    return sequence, owners


def test_greedy_match_takes_nearest_pairs_within_gate() -> None:
    distances = np.array([[1.0, 5.0], [2.0, 30.0]])
    pairs = greedy_match(distances, gates=np.array([10.0, 10.0]))
    assert sorted(pairs) == [(0, 0)]  # row 1's only option inside its gate was taken by the nearer row 0
    assert greedy_match(np.zeros((0, 3)), np.zeros(0)) == []


def test_single_target_gets_one_id_from_its_first_sighting() -> None:
    sequence = [[detection(5 + 2.0 * t, 40)] for t in range(10)]
    ids, _ = track_sequence(sequence)
    assert [frame[0] for frame in ids] == [1] * 10


def test_crossing_targets_keep_their_ids() -> None:
    sequence, owners = crossing_sequence()
    ids, _ = track_sequence(sequence)
    seen = ids_per_target(ids, owners)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1
    assert seen["a"] != seen["b"]


def test_target_missing_for_two_frames_keeps_its_id() -> None:
    sequence = []
    for t in range(20):
        sequence.append([] if t in (8, 9) else [detection(10 + 4.0 * t, 50 + 1.0 * t)])
    ids, _ = track_sequence(sequence)
    assert {frame[0] for frame in ids if frame} == {1}


def test_long_absence_starts_a_new_track() -> None:
    config = TrackerConfig(max_misses=3)
    sequence = [[detection(30, 30)] for _ in range(5)] + [[] for _ in range(6)] + [[detection(30, 30)]] * 5
    ids, _ = track_sequence(sequence, config=config)
    assert ids[0] == [1] and ids[-1] == [2]


def test_stray_detection_stays_untracked() -> None:
    sequence = [[detection(5 + 2.0 * t, 40)] for t in range(8)]
    sequence[4] = sequence[4] + [detection(120, 100)]  # one false alarm far away
    ids, _ = track_sequence(sequence)
    assert ids[4] == [1, None]


def test_classes_are_never_mixed() -> None:
    sequence = [[detection(20 + t, 20, class_id=0), detection(20 + t, 21, class_id=1)] for t in range(6)]
    ids, _ = track_sequence(sequence)
    assert all(frame[0] != frame[1] for frame in ids)
    assert {frame[0] for frame in ids} == {ids[0][0]} and {frame[1] for frame in ids} == {ids[0][1]}


def test_ids_are_stable_across_a_json_round_trip() -> None:
    sequence, _ = crossing_sequence(40)
    whole, _ = track_sequence(sequence)
    first, tracker = track_sequence(sequence[:17])  # cut right after the crossing point
    restored = Tracker.from_state(json.loads(json.dumps(tracker.state_dict())))
    second, _ = track_sequence(sequence[17:], tracker=restored)
    assert first + second == whole
    assert restored.state_dict()["next_track_id"] == 3
