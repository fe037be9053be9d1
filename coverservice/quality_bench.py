"""Quality benchmark: does the scorer pick the frame a person would pick, on pictures it
was never tuned on?

Every *picture* (a photograph or a synthetic stream scene) becomes *windows* of six
consecutive screenshots at each size CSS sends: every frame a different pan and zoom of
the picture, as a live camera gives (no two frames are pixel-identical), one frame clean
and five degraded the way live streams degrade (Gaussian and motion blur in any
direction, bad exposure, haze, sensor noise, low-bitrate blocks) or carrying no picture
(black frames, test cards, flat slates). Every frame is a normal JPEG, as CSS delivers
them, and goes through the service's own decode.

The pictures are split, by picture, into a fixed **tuning** set (what the scorer's
constants were chosen on) and a fixed **held-out** set (run to report, never to tune):
a figure on the tuning set is not a result. Three scorers, on the same frames:

- **baseline**: the variance of the Laplacian of the draft decode, no rejection;
- **draft**: ``scoring.score_luma``, the per-frame stage the worker runs on every frame;
- **detail**: ``scoring.score_detail`` on ``imaging.decode_detail`` of the same bytes, the
  stage the worker runs on contenders only. In windows it runs as the worker runs it
  (**two-stage**): the draft rejects and ranks, the contenders (``scoring.contenders``)
  are measured again and the best detail score wins. In pairs and graded ladders every
  unrejected frame is measured at both stages, and each stage is compared with itself.

Three figures per scorer:

- **windows**: ``selection.best_of`` picks the clean frame of the window;
- **pairs**: the clean frame against each degraded frame of its window; won when the
  clean one scores strictly higher (or the degraded one is rejected and the clean one is
  not);
- **graded**: a ladder of one kind at rising strength (clean, mild, medium, strong), each
  its own view; right when the scores fall strictly along it (rejections score 0).

The cost figures time, on 1280×720 JPEGs, bytes → draft scores against Pillow's own
``draft('L', (w // 4, h // 4))`` decode of the same bytes (interleaved, one run), and
bytes → detail scores per contender at 1280×720 and 1920×1080.

Photographs need the ``bench`` extra (scikit-image, scikit-learn) and the shared
development photos (``../shared/quality-photos/`` beside the repository, or
``--photos DIR``); synthetic scenes need nothing beyond the service's own dependencies.
All frames come from fixed seeds: a rerun gives the same frames.
"""

from __future__ import annotations

import itertools
import statistics
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from . import imaging, scenes, scoring
from .scenes import RGB, Degradation, Size, degrade
from .selection import Candidate, best_of

# scikit-image's astronaut, chelsea, coffee, rocket; scikit-learn's china.
LIBRARY_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china")
SYNTHETIC = scenes.SCENES  # studio, game, outdoor, mobile: drawn by scenes.py
# The development photos of ../shared/quality-photos/ (OpenCV's sample data), by stem.
SHARED_PHOTOS = (
    "fruits", "baboon", "board", "aloeL", "graf1", "rubberwhale1", "ela_original",
    "box_in_scene", "orange", "apple", "starry_night", "smarties", "HappyFish",
    "Blender_Suzanne1",
)

# The split, by picture, fixed before the scorer's detail stage was written. Tuning holds
# what earlier scorers were tuned on (the library photos, studio, game) and half of the
# shared photos; held-out holds the other half and the two synthetic scenes no constant
# was ever fitted to, so each set has a cartoon or render (HappyFish / Blender_Suzanne1),
# a flat-background still life (orange / apple, smarties), fine texture (baboon, board /
# aloeL, starry_night) and a grey picture (box_in_scene is the only one: held out).
TUNING = (
    *LIBRARY_PHOTOS, "studio", "game",
    "fruits", "baboon", "board", "graf1", "rubberwhale1", "orange", "HappyFish",
)
HELD_OUT = (
    "outdoor", "mobile",
    "aloeL", "ela_original", "box_in_scene", "apple", "starry_night", "smarties",
    "Blender_Suzanne1",
)
PICTURES = TUNING + HELD_OUT

# Every size CSS sends, and 1080p.
SIZES: tuple[Size, ...] = ((1920, 1080), (1280, 720), (960, 540), (640, 360), (360, 640))


def _d(family: str, *strengths: float) -> tuple[Degradation, ...]:
    return tuple(Degradation(family, s) for s in strengths)


def _k(family: str, *kinds: str) -> tuple[Degradation, ...]:
    return tuple(Degradation(family, kind=k) for k in kinds)


# Units (scenes.py): gaussian σ and motion length in pixels of a 720-line frame, i.e. of
# the large cover (scaled to the frame, so a strength looks the same at every size; a
# motion blur's direction is drawn at random); under/over: linear-light gain; haze: veil
# opacity; noise: σ of luma noise in 8-bit levels at the frame's own size; blocks: the JPEG
# quality of the low-bitrate encode before the normal one.
DEGRADATIONS = (
    _d("gaussian", 0.8, 1.2, 1.8, 2.5, 3.5, 5.0)
    + _d("motion", 5.0, 7.0, 10.0, 13.0, 17.0, 21.0)
    + _d("under", 0.3, 0.2, 0.12)
    + _d("over", 2.0, 2.8, 4.0)
    + _d("haze", 0.35, 0.5, 0.7)
    + _d("noise", 6.0, 10.0, 16.0, 24.0)
    + _d("blocks", 20.0, 12.0, 7.0)
    + _k("black", "pure", "dim", "logo")
    + _k("testcard", "smpte", "ebu", "nosignal", "offline")
    + _k("flat", "grey", "colour", "ramp", "vignette")
)
FAMILIES = tuple(dict.fromkeys(d.family for d in DEGRADATIONS))

# Graded ladders: mild, medium, strong of one kind.
LADDERS: dict[str, tuple[float, float, float]] = {
    "gaussian": (1.2, 2.5, 5.0),
    "motion": (7.0, 13.0, 21.0),
    "under": (0.35, 0.2, 0.1),
    "over": (1.8, 2.8, 4.5),
    "haze": (0.3, 0.5, 0.7),
    "noise": (6.0, 12.0, 24.0),
    "blocks": (20.0, 12.0, 6.0),
}

SCORERS = ("baseline", "draft", "detail")
SETS = ("tuning", "held-out")

_CAP = 1 << 26
_START = datetime(2026, 1, 1, tzinfo=UTC)


def default_photos() -> Path:
    """Where the shared development photos sit: ``../shared/quality-photos/`` beside the
    repository (the same place in a worktree, a checkout and CI)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "quality-photos"


@dataclass(frozen=True)
class Config:
    pictures: tuple[str, ...] = PICTURES
    sizes: tuple[Size, ...] = SIZES
    windows: int = 8  # per picture and size
    frames_per_window: int = 6  # one clean, the rest degraded
    ladders: bool = True  # one graded ladder per picture, size and kind
    photos: Path | None = None  # the shared photos' directory (None: default_photos())
    seed: int = 17
    speed_frames: int = 7  # 1280×720 JPEGs timed for the cost figures (0: skip)
    speed_repeats: int = 60


# Seconds, not minutes: checks the benchmark itself (tests, CI), not the scorer.
TINY = Config(
    pictures=("studio", "outdoor"), sizes=((1280, 720), (360, 640)), windows=1, ladders=True,
    speed_frames=0,
)


class BenchError(Exception):
    """The benchmark cannot run as configured; the message says why."""


# --- scorers ---------------------------------------------------------------------------


def variance_of_laplacian(decoded: scoring.Decoded) -> float:
    """The textbook baseline: variance of the 4-neighbour Laplacian of the draft luma."""
    y = decoded.luma.astype(np.float64)
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(lap.var())


@dataclass(frozen=True)
class Scored:
    """One frame through every scorer."""

    baseline: float
    draft: scoring.Scores
    detail: scoring.Scores  # the draft itself when the draft rejected the frame

    def value(self, scorer: str) -> tuple[float, bool]:
        if scorer == "baseline":
            return self.baseline, False
        s = self.draft if scorer == "draft" else self.detail
        return s.score, s.rejected


def score_frame(data: bytes) -> Scored:
    decoded = imaging.decode_luma(data, max_pixels=_CAP)
    draft = scoring.score_luma(decoded)
    detail = draft
    if not draft.rejected:
        detail = scoring.score_detail(draft, imaging.decode_detail(data, max_pixels=_CAP))
    return Scored(variance_of_laplacian(decoded), draft, detail)


# --- results ---------------------------------------------------------------------------


@dataclass
class Tally:
    won: int = 0
    total: int = 0

    def add(self, won: bool) -> None:
        self.won += int(won)
        self.total += 1

    @property
    def rate(self) -> float:
        return self.won / self.total if self.total else 0.0


def _tallies() -> dict[str, Tally]:
    return {name: Tally() for name in SCORERS}


@dataclass
class SetResult:
    name: str  # "tuning" or "held-out"
    pictures: tuple[str, ...]
    windows: dict[str, Tally] = field(default_factory=_tallies)
    pairs: dict[str, Tally] = field(default_factory=_tallies)
    graded: dict[str, Tally] = field(default_factory=_tallies)
    # (figure, key) -> scorer -> tally; figure "windows" / "pairs" / "graded", key a
    # degradation family or a size "1280×720".
    by: dict[tuple[str, str], dict[str, Tally]] = field(default_factory=dict)
    contenders: list[int] = field(default_factory=list)  # per window, detail-stage frames
    losses: list[str] = field(default_factory=list)  # two-stage windows and detail pairs lost

    def add(self, figure: str, keys: Sequence[str], scorer: str, won: bool) -> None:
        getattr(self, figure)[scorer].add(won)
        for key in keys:
            self.by.setdefault((figure, key), _tallies())[scorer].add(won)


@dataclass(frozen=True)
class Cost:
    frames: int
    draft_decode_ms: float  # Pillow draft('L', (w//4, h//4)) decode, 1280×720, median
    draft_ms: float  # decode_luma + score_luma, 1280×720, median
    detail_ms: dict[str, float]  # size -> decode_detail + score_detail, median per contender

    @property
    def ratio(self) -> float:
        return self.draft_ms / self.draft_decode_ms


@dataclass
class Result:
    sets: list[SetResult]
    cost: Cost | None
    missing: list[str]  # pictures asked for but not found (the shared photos' directory)
    sizes: tuple[Size, ...]
    frames_per_window: int


def run(config: Config = Config(), *, progress: Callable[[str], None] | None = None) -> Result:
    photos = config.photos or default_photos()
    unknown = [p for p in config.pictures if p not in PICTURES]
    if unknown:
        raise BenchError(f"unknown scene {unknown[0]!r}; known: {', '.join(PICTURES)}")
    sources: dict[str, RGB] = {}
    missing = []
    for name in config.pictures:
        if name in SHARED_PHOTOS and _shared_file(photos, name) is None:
            missing.append(name)
            continue
        sources[name] = scene_source(name, photos)
    if missing and progress:
        progress(f"not found in {photos}: {', '.join(missing)} (left out of every figure)")
    results = []
    for set_name, members in (("tuning", TUNING), ("held-out", HELD_OUT)):
        chosen = tuple(p for p in members if p in sources)
        if not chosen:
            continue
        result = SetResult(set_name, chosen)
        for picture in chosen:
            for size in config.sizes:
                if progress:
                    progress(f"{set_name}: {picture} {size[0]}×{size[1]}")
                _run_picture(result, picture, sources[picture], size, config)
        results.append(result)
    cost = None
    if config.speed_frames:
        if progress:
            progress("timing")
        cost = measure_cost(_speed_frames(sources, config.speed_frames), config.speed_repeats)
    return Result(results, cost, missing, config.sizes, config.frames_per_window)


def _seed(config: Config, picture: str, size: Size) -> np.random.Generator:
    # By name, not position: adding a picture or a size leaves every other frame alone.
    return np.random.default_rng([config.seed, zlib.crc32(picture.encode()), *size])


def _run_picture(result: SetResult, picture: str, source: RGB, size: Size, config: Config) -> None:
    rng = _seed(config, picture, size)
    label = f"{size[0]}×{size[1]}"
    cycle = _cycle(DEGRADATIONS, rng)
    for _ in range(config.windows):
        degradations = [next(cycle) for _ in range(config.frames_per_window - 1)]
        _run_window(result, picture, label, source, size, degradations, rng)
    if config.ladders:
        for family, strengths in LADDERS.items():
            ladder: list[Degradation | None] = [None, *(Degradation(family, s) for s in strengths)]
            scored = [score_frame(make_frame(source, size, d, rng)) for d in ladder]
            for scorer in SCORERS:
                values = [_ordinal(s.value(scorer)) for s in scored]
                right = all(a > b for a, b in itertools.pairwise(values))
                result.add("graded", (family, label), scorer, right)
                if not right and scorer == "detail":
                    shown = " > ".join(f"{v:.4f}" for v in values)
                    result.losses.append(f"graded {picture} {label} {family}: {shown}")


def _ordinal(value: tuple[float, bool]) -> float:
    score, rejected = value
    return -1.0 if rejected else score


def _cycle(items: Sequence[Degradation], rng: np.random.Generator) -> Iterator[Degradation]:
    """Every degradation once per round, each round shuffled: even coverage."""
    while True:
        for index in rng.permutation(len(items)):
            yield items[int(index)]


def _run_window(
    result: SetResult,
    picture: str,
    label: str,
    source: RGB,
    size: Size,
    degradations: list[Degradation],
    rng: np.random.Generator,
) -> None:
    frames: list[Degradation | None] = [None, *degradations]
    scored = [score_frame(make_frame(source, size, d, rng)) for d in frames]
    # Screenshot order: the clean frame lands anywhere in the window.
    order = [int(i) for i in rng.permutation(len(frames))]
    for scorer in SCORERS:
        clean_score, clean_rejected = scored[0].value(scorer)
        for degradation, s in zip(degradations, scored[1:], strict=True):
            score, rejected = s.value(scorer)
            won = not clean_rejected and (rejected or clean_score > score)
            result.add("pairs", (degradation.family, label), scorer, won)
            if not won and scorer == "detail":
                result.losses.append(
                    f"pair {picture} {label} {degradation.label}: clean {clean_score:.4f}"
                    f"{' rejected' if clean_rejected else ''} vs {score:.4f}"
                )
    # Windows, as the worker decides them: the draft on every frame, the detail stage on
    # its contenders only (two-stage).
    drafts = [s.draft.score if not s.draft.rejected else None for s in scored]
    kept = [i for i, d in enumerate(drafts) if d is not None]
    contenders = scoring.contenders(
        [scored[i].draft.score for i in kept], [scored[i].draft.noise_factor for i in kept]
    )
    chosen = {kept[j] for j in contenders}
    result.contenders.append(len(chosen))
    values = {
        "baseline": [(i, s.baseline) for i, s in enumerate(scored)],
        "draft": [(i, d) for i, d in enumerate(drafts) if d is not None],
        "detail": [(i, scored[i].detail.score) for i in sorted(chosen)],
    }
    keys = [label] + [d.family for d in degradations]
    for scorer, candidates in values.items():
        picked = _pick(candidates, order)
        result.add("windows", list(dict.fromkeys(keys)), scorer, picked == 0)
        if picked != 0 and scorer == "detail":
            shown = ", ".join(
                f"{'clean' if i == 0 else frames[i].label}"  # type: ignore[union-attr]
                f" {scored[i].draft.score:.3f}/{scored[i].detail.score:.3f}"
                + ("" if i in chosen else " (not a contender)")
                for i in range(len(frames))
            )
            result.losses.append(f"window {picture} {label}: {shown}")


def _pick(candidates: list[tuple[int, float]], order: list[int]) -> int | None:
    # Just after the last screenshot, as the worker decides; the whole window is fresh.
    now = _START + timedelta(seconds=10 * len(order))
    return best_of([Candidate(i, v, _START + timedelta(seconds=10 * order[i])) for i, v in candidates], now=now)


# --- cost ------------------------------------------------------------------------------


def measure_cost(jpegs: dict[str, list[bytes]], repeats: int) -> Cost:
    """Median thread CPU per frame, interleaved (the order alternates every repeat):
    Pillow's draft decode, bytes → draft scores, bytes → detail scores of a contender
    (its draft scores already in hand)."""
    from PIL import Image

    def pillow(data: bytes) -> None:
        import io

        im = Image.open(io.BytesIO(data))
        im.draft("L", (im.width // 4, im.height // 4))
        im.load()

    def draft(data: bytes) -> None:
        scoring.score_luma(imaging.decode_luma(data, max_pixels=_CAP))

    base = jpegs["1280×720"]
    drafts = {d: scoring.score_luma(imaging.decode_luma(d, max_pixels=_CAP)) for v in jpegs.values() for d in v}

    def detail(data: bytes) -> None:
        scoring.score_detail(drafts[data], imaging.decode_detail(data, max_pixels=_CAP))

    times: dict[str, list[int]] = {}
    jobs: list[tuple[str, Callable[[bytes], None], list[bytes]]] = [
        ("pillow", pillow, base), ("draft", draft, base),
        *((f"detail {label}", detail, frames) for label, frames in jpegs.items()),
    ]
    for _, fn, frames in jobs:  # warm every path
        for data in frames:
            fn(data)
    for rep in range(repeats):
        for name, fn, frames in jobs if rep % 2 == 0 else jobs[::-1]:
            for data in frames:
                start = time.thread_time_ns()
                fn(data)
                times.setdefault(name, []).append(time.thread_time_ns() - start)
    ms = {name: statistics.median(t) / 1e6 for name, t in times.items()}
    return Cost(
        frames=len(base),
        draft_decode_ms=ms["pillow"],
        draft_ms=ms["draft"],
        detail_ms={label: ms[f"detail {label}"] for label in jpegs},
    )


def _speed_frames(sources: dict[str, RGB], count: int) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    names = list(sources)
    return {
        f"{w}×{h}": [make_frame(sources[names[i % len(names)]], (w, h), None, rng) for i in range(count)]
        for w, h in ((1280, 720), (1920, 1080))
    }


# --- report ----------------------------------------------------------------------------


def report(result: Result) -> str:
    """Markdown: per set the three figures of every scorer, then the held-out set per
    degradation kind and per frame size, the cost figures, and the held-out losses."""
    lines = []
    if result.missing:
        lines += [
            (f"Not found, left out of every figure: {', '.join(result.missing)} "
            f"(the shared photos: --photos DIR)."),
            "",
        ]
    lines += [
        ("| set | pictures | windows: baseline | draft | two-stage | pairs: baseline | draft "
        "| detail | graded: baseline | draft | detail |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result.sets:
        cells = [_pct(getattr(s, figure)[scorer]) for figure in ("windows", "pairs", "graded")
                 for scorer in SCORERS]
        lines.append(f"| {s.name} | {', '.join(s.pictures)} | " + " | ".join(cells) + " |")
    for s in result.sets:
        if s.name != "held-out":
            continue
        for title, keys in (
            ("kind", FAMILIES),
            ("size", [f"{w}×{h}" for w, h in result.sizes]),
        ):
            lines += [
                "",
                (f"| held-out, by {title} | windows: baseline | draft | two-stage | pairs: baseline "
                "| draft | detail | graded: baseline | draft | detail |"),
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for key in keys:
                cells = []
                for figure in ("windows", "pairs", "graded"):
                    tallies = s.by.get((figure, key))
                    cells += [_pct(tallies[n]) if tallies else "–" for n in SCORERS]
                lines.append(f"| {key} | " + " | ".join(cells) + " |")
        if s.contenders:
            lines += [
                "",
                (f"Detail stage on held-out windows: {statistics.mean(s.contenders):.2f} of "
                f"{result.frames_per_window} frames per window are contenders "
                f"(max {max(s.contenders)})."),
            ]
    if result.cost:
        c = result.cost
        detail = ", ".join(
            f"{label} {ms:.2f} ms ({ms / c.draft_decode_ms:.1f}× the draft decode)"
            for label, ms in c.detail_ms.items()
        )
        lines += [
            "",
            (f"Cost, median thread CPU over {c.frames} frames: draft stage (bytes → scores, "
            f"1280×720) {c.draft_ms:.2f} ms against Pillow draft('L', (w//4, h//4)) decode "
            f"{c.draft_decode_ms:.2f} ms: ratio {c.ratio:.2f}×. Detail stage per contender: "
            f"{detail}."),
        ]
    for s in result.sets:
        if s.name == "held-out" and s.losses:
            lines += ["", "Held-out losses (two-stage windows, detail pairs, detail ladders):"]
            lines += [f"- {loss}" for loss in s.losses]
    return "\n".join(lines)


def to_dict(result: Result) -> dict[str, Any]:
    """The figures as plain data (for --json and for tests)."""
    return {
        "sets": [
            {
                "name": s.name,
                "pictures": list(s.pictures),
                **{figure: {n: asdict(t) for n, t in getattr(s, figure).items()}
                   for figure in ("windows", "pairs", "graded")},
                "by": {
                    f"{figure} {key}": {n: asdict(t) for n, t in tallies.items()}
                    for (figure, key), tallies in s.by.items()
                },
                "contenders": s.contenders,
                "losses": s.losses,
            }
            for s in result.sets
        ],
        "missing": result.missing,
        "cost": None
        if result.cost is None
        else {
            "frames": result.cost.frames,
            "draft_decode_ms": result.cost.draft_decode_ms,
            "draft_ms": result.cost.draft_ms,
            "ratio": result.cost.ratio,
            "detail_ms": result.cost.detail_ms,
        },
    }


def _pct(tally: Tally) -> str:
    return f"{tally.rate:.1%} ({tally.won}/{tally.total})"


# --- pictures --------------------------------------------------------------------------


def _shared_file(photos: Path, name: str) -> Path | None:
    for suffix in (".jpg", ".png"):
        path = photos / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def scene_source(name: str, photos: Path | None = None) -> RGB:
    """The full-size RGB picture a scene's frames are cut from."""
    if name in SYNTHETIC:
        return scenes.source(name)
    if name in SHARED_PHOTOS:
        directory = photos or default_photos()
        path = _shared_file(directory, name)
        if path is None:
            raise BenchError(f"picture {name!r} is not in {directory} (--photos DIR)")
        from PIL import Image

        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    if name not in LIBRARY_PHOTOS:
        raise BenchError(f"unknown scene {name!r}; known: {', '.join(PICTURES)}")
    try:
        if name == "china":
            from sklearn.datasets import load_sample_image  # type: ignore[import-untyped]

            picture = load_sample_image("china.jpg")
        else:
            from skimage import data

            picture = getattr(data, name)()
    except ImportError as exc:
        raise BenchError(
            f"scene {name!r} needs scikit-image and scikit-learn: pip install -e '.[bench]' "
            f"(or run the synthetic scenes only: {', '.join(SYNTHETIC)})"
        ) from exc
    return np.ascontiguousarray(picture[..., :3], dtype=np.uint8)


def make_frame(
    source: RGB, size: Size, degradation: Degradation | None, rng: np.random.Generator
) -> bytes:
    """One screenshot: a small pan and zoom of ``source`` at ``size``, degraded, as JPEG."""
    # Zoomed in 4–12 % and panned up to 3 % of the picture: consecutive screenshots of
    # one scene, never quite the same.
    frame = scenes.view(
        source, size, zoom=rng.uniform(1.04, 1.12),
        pan=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
    )
    if degradation is not None:
        frame = degrade(frame, degradation, rng)
    # CSS screenshots are ordinary JPEGs; their quality varies by template.
    return scenes.jpeg(frame, int(rng.integers(80, 93)))
