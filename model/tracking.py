"""Multi-object tracking for tiny targets, numpy only.

Boxes of a few pixels rarely overlap from one frame to the next, so association by IoU fails for small
infrared targets. This tracker associates by the distance between a detection's centre and the track's
PREDICTED centre, using an alpha-beta filter (a fixed-gain constant-velocity Kalman filter):

    predict:  x' = x + v                      (one step = one processed frame)
    correct:  r = z - x';  x = x' + alpha * r;  v = v + beta * r

Association is greedy on the gated distance matrix (nearest pair first, each track and detection used at
most once, only within the same class). A track is tentative until it has `min_hits` hits, then it is
confirmed and receives the next public `track_id` (1, 2, 3, ... in order of confirmation); it is removed
after `max_misses` consecutive frames without a detection. The gate widens with each miss, because the
prediction gets less certain while a target is unseen.

The whole state (configuration, tracks, id counters) round-trips through JSON, so a video processed in
pieces can continue tracking exactly where the previous piece stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker parameters; distances are in pixels of the original frame."""

    gate_px: float = 24.0  # largest centre distance to the prediction that may still match
    gate_growth_per_miss: float = 0.5  # gate multiplier grows by this per consecutive miss
    new_track_gate_px: float = 32.0  # gate for a track seen once (its velocity is still unknown)
    alpha: float = 0.85  # position gain of the alpha-beta filter
    beta: float = 0.35  # velocity gain of the alpha-beta filter
    min_hits: int = 3  # hits before a track is confirmed and gets a track_id
    max_misses: int = 5  # consecutive misses after which a confirmed track is dropped
    max_misses_tentative: int = 2  # the same for a track not yet confirmed (stray detections fade quickly)
    size_smoothing: float = 0.5  # exponential smoothing of box width and height


@dataclass
class Track:
    """One track's filter state. `track_id` stays None while the track is tentative."""

    key: int  # internal identity, unique for the tracker's lifetime
    class_id: int
    x: float
    y: float
    width: float
    height: float
    vx: float = 0.0
    vy: float = 0.0
    hits: int = 1
    misses: int = 0
    age: int = 1
    track_id: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def predicted(self) -> tuple[float, float]:
        """Centre expected in the next frame."""
        return self.x + self.vx, self.y + self.vy

    def gate(self, config: TrackerConfig) -> float:
        base = config.new_track_gate_px if self.hits == 1 else config.gate_px
        return base * (1.0 + config.gate_growth_per_miss * self.misses)


def box_centre(box: Sequence[float]) -> tuple[float, float, float, float]:
    """[x1, y1, x2, y2] -> (cx, cy, width, height)."""
    x1, y1, x2, y2 = (float(value) for value in box)
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1


def greedy_match(distances: np.ndarray, gates: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) by ascending distance, each row and column at most once, only where distance <= gate.

    distances: (T, D) centre distances, inf where a pair is not allowed; gates: (T,) per-row limit.
    """
    if distances.size == 0:
        return []
    allowed = distances <= gates[:, None]
    rows, cols = np.nonzero(allowed)
    order = np.argsort(distances[rows, cols], kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for position in order:
        row, col = int(rows[position]), int(cols[position])
        if row in used_rows or col in used_cols:
            continue
        used_rows.add(row)
        used_cols.add(col)
        pairs.append((row, col))
    return pairs


@dataclass
class Tracker:
    """Online tracker: call `update` once per processed frame, in frame order."""

    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list[Track] = field(default_factory=list)
    next_track_id: int = 1
    next_key: int = 1
    frames_seen: int = 0

    def update(self, detections: Sequence[dict[str, Any]]) -> list[Track]:
        """Advance one frame. Returns, for each detection in order, the track it now belongs to.

        Detections are dicts with "box" ([x1, y1, x2, y2]) and optionally "class_id" (default 0). A returned
        track's `track_id` is None while that track is still tentative.
        """
        self.frames_seen += 1
        measured = [box_centre(detection["box"]) for detection in detections]
        classes = [int(detection.get("class_id", 0)) for detection in detections]
        distances = self._distance_matrix(measured, classes)
        gates = np.array([track.gate(self.config) for track in self.tracks], dtype=np.float64)
        pairs = greedy_match(distances, gates)

        owner: list[Track | None] = [None] * len(detections)
        matched_tracks: set[int] = set()
        for row, col in pairs:
            track = self.tracks[row]
            self._correct(track, measured[col])
            owner[col] = track
            matched_tracks.add(row)
        for row, track in enumerate(self.tracks):
            if row not in matched_tracks:
                self._coast(track)
        self.tracks = [track for track in self.tracks if track.misses <= self._miss_limit(track)]
        for col, detection_owner in enumerate(owner):
            if detection_owner is None:
                owner[col] = self._start(measured[col], classes[col])
        return [track for track in owner if track is not None]

    def _distance_matrix(self, measured: list[tuple[float, float, float, float]], classes: list[int]) -> np.ndarray:
        """(T, D) distances from each track's predicted centre to each detection centre; inf across classes."""
        if not self.tracks or not measured:
            return np.zeros((len(self.tracks), len(measured)), dtype=np.float64)
        predicted = np.array([track.predicted() for track in self.tracks], dtype=np.float64)  # (T, 2)
        centres = np.array([(cx, cy) for cx, cy, _, _ in measured], dtype=np.float64)  # (D, 2)
        distances = np.linalg.norm(predicted[:, None, :] - centres[None, :, :], axis=2)  # (T, D)
        same_class = np.array([track.class_id for track in self.tracks])[:, None] == np.array(classes)[None, :]
        return np.where(same_class, distances, np.inf)

    def _miss_limit(self, track: Track) -> int:
        return self.config.max_misses if track.confirmed else self.config.max_misses_tentative

    def _correct(self, track: Track, measurement: tuple[float, float, float, float]) -> None:
        cx, cy, width, height = measurement
        steps = track.misses + 1
        if track.hits == 1:
            # Second sighting: the velocity is the observed displacement per frame, the position the measurement.
            track.vx, track.vy = (cx - track.x) / steps, (cy - track.y) / steps
            track.x, track.y = cx, cy
        else:
            predicted_x, predicted_y = track.predicted()
            residual_x, residual_y = cx - predicted_x, cy - predicted_y
            track.x = predicted_x + self.config.alpha * residual_x
            track.y = predicted_y + self.config.alpha * residual_y
            track.vx += self.config.beta * residual_x / steps
            track.vy += self.config.beta * residual_y / steps
        smoothing = self.config.size_smoothing
        track.width = smoothing * track.width + (1.0 - smoothing) * width
        track.height = smoothing * track.height + (1.0 - smoothing) * height
        track.hits += 1
        track.misses = 0
        track.age += 1
        if track.track_id is None and track.hits >= self.config.min_hits:
            track.track_id = self.next_track_id
            self.next_track_id += 1

    def _coast(self, track: Track) -> None:
        """No detection this frame: move along the prediction and count a miss."""
        track.x, track.y = track.predicted()
        track.misses += 1
        track.age += 1

    def _start(self, measurement: tuple[float, float, float, float], class_id: int) -> Track:
        cx, cy, width, height = measurement
        track = Track(key=self.next_key, class_id=class_id, x=cx, y=cy, width=width, height=height)
        self.next_key += 1
        if self.config.min_hits <= 1:
            track.track_id = self.next_track_id
            self.next_track_id += 1
        self.tracks.append(track)
        return track

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue tracking later, as JSON-compatible values."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "tracks": [asdict(track) for track in self.tracks],
            "next_track_id": self.next_track_id,
            "next_key": self.next_key,
            "frames_seen": self.frames_seen,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tracker:
        """Rebuild a tracker from `state_dict()` output (for example after a JSON round trip)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported tracker state version {state.get('version')!r}")
        return cls(
            config=TrackerConfig(**state["config"]),
            tracks=[Track(**track) for track in state["tracks"]],
            next_track_id=int(state["next_track_id"]),
            next_key=int(state["next_key"]),
            frames_seen=int(state["frames_seen"]),
        )


def track_sequence(
    frames: Sequence[Sequence[dict[str, Any]]],
    config: TrackerConfig | None = None,
    tracker: Tracker | None = None,
) -> tuple[list[list[int | None]], Tracker]:
    """Track a whole sequence offline and return a track_id per detection per frame.

    Offline use can look back: once a track is confirmed, its earlier (tentative) detections get the same
    id, so a target is labelled from its first sighting. Detections whose track never gets confirmed (one
    or two stray hits) keep None. Pass `tracker` to continue from an earlier state; the final tracker is
    returned so a following piece of the sequence can continue from it.
    """
    tracker = tracker if tracker is not None else Tracker(config=config or TrackerConfig())
    ids: list[list[int | None]] = [[None] * len(detections) for detections in frames]
    pending: dict[int, list[tuple[int, int]]] = {}
    for frame_index, detections in enumerate(frames):
        for detection_index, track in enumerate(tracker.update(detections)):
            if track.track_id is None:
                pending.setdefault(track.key, []).append((frame_index, detection_index))
                continue
            ids[frame_index][detection_index] = track.track_id
            for earlier_frame, earlier_detection in pending.pop(track.key, []):
                ids[earlier_frame][earlier_detection] = track.track_id
    return ids, tracker
