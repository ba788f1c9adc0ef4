"""``shapes``: the embedded default data set, procedural and byte-for-byte deterministic from a seed.

One coloured shape per RGB image on a textured background. The class is the shape; its colour, scale,
position, rotation, the background texture and the background colour are nuisance factors, drawn
independently of the class and recorded, so factor probes can show what a representation kept.

Determinism: every random draw is a counter-based hash of (stream, image index, factor), so image ``i``
is the same whatever ``n`` is, on any machine. Geometry uses only IEEE-exact float64 operations
(+, -, *, /, comparisons; rotation sines come from a table computed once with Python's ``math``), and
anti-aliasing is an integer count of covered sub-samples, so no libm or SIMD difference changes a byte.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from workbench.data.base import ImageDataset, check_n, register

CLASS_NAMES = ["circle", "square", "triangle", "plus", "star", "ring", "crescent", "diamond"]
COLOUR_NAMES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
PALETTE = np.array([[220, 50, 47], [245, 140, 30], [240, 220, 40], [60, 180, 75],
                    [40, 200, 220], [50, 90, 220], [140, 70, 200], [240, 110, 180]], dtype=np.int64)
BACKGROUNDS = ["flat", "noise", "stripes", "checker", "gradient"]
SCALE_RANGE = (0.28, 0.4)       # shape radius as a fraction of the image side
POS_RANGE = 0.9                # centre offset as a fraction of the room left around the shape
DEFAULT_N = {"train": 10000, "test": 2000}
DARK = np.array([28, 28, 32], dtype=np.float64)
# muted background tints: their hue carries little of an image's identity, so colour jitter can remove it
# (two saturated colours per image would give each image a jitter-proof colour pair, a shortcut)
BG_COLOUR_NAMES = ["grey", "sand", "sage", "slate", "mauve", "taupe"]
BG_PALETTE = np.array([[150, 150, 150], [176, 160, 128], [136, 156, 132], [128, 144, 164], [160, 136, 156],
                       [148, 140, 128]], dtype=np.int64)

# factor ids: one hash stream per random draw
_F_LABEL, _F_COLOUR, _F_BGCOL, _F_BG, _F_SCALE, _F_PX, _F_PY, _F_ROT, _F_TEX, _F_NOISE = range(1, 11)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_COS = np.array([math.cos(math.radians(d)) for d in range(360)], dtype=np.float64)
_SIN = np.array([math.sin(math.radians(d)) for d in range(360)], dtype=np.float64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _uniform(stream: int, idx: np.ndarray, factor: int, extra: np.ndarray | None = None) -> np.ndarray:
    """Uniform float64 in [0, 1) from a hash of (stream, image index, factor[, extra key]); broadcasts."""
    with np.errstate(over="ignore"):
        key = np.asarray(stream * 1_000_003 + factor, dtype=np.int64).astype(np.uint64)
        h = _mix(key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019))
        h = _mix(h ^ np.asarray(idx, dtype=np.int64).astype(np.uint64))
        if extra is not None:
            h = _mix(h ^ (np.asarray(extra, dtype=np.int64).astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _stream(seed: int, split: str) -> int:
    return int(seed) * 2 + (1 if split == "test" else 0)


class _Grid:
    """Sub-sample coordinates of a ``w`` x ``w`` pixel window at (x0, y0), ``ss`` x ``ss`` samples per pixel,
    in each shape's own frame: ``u``, ``v`` [n, w*ss, w*ss] (rows are y), in units of the shape radius."""

    def __init__(self, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, rot: np.ndarray, x0: np.ndarray,
                 y0: np.ndarray, w: int, ss: int):
        k = np.arange(w * ss, dtype=np.int64)
        xs = (np.asarray(x0, np.int64)[:, None] * ss + k[None, :] + 0.5) / ss        # [n, W]
        ys = (np.asarray(y0, np.int64)[:, None] * ss + k[None, :] + 0.5) / ss        # [n, H]
        dx = torch.from_numpy((xs - np.asarray(cx)[:, None]) / np.asarray(r)[:, None])[:, None, :]
        dy = torch.from_numpy((ys - np.asarray(cy)[:, None]) / np.asarray(r)[:, None])[:, :, None]
        rot = np.asarray(rot, np.int64) % 360
        c = torch.from_numpy(_COS[rot])[:, None, None]
        s = torch.from_numpy(_SIN[rot])[:, None, None]
        self.u = dx * c + dy * s            # rotate the sample into the shape's frame
        self.v = dy * c - dx * s


def _halfplanes(u: torch.Tensor, v: torch.Tensor, degrees: list[int], dist: float) -> torch.Tensor:
    """Inside the convex polygon {u cos a + v sin a <= dist for each a in degrees}."""
    inside = torch.ones_like(u, dtype=torch.bool)
    for a in degrees:
        inside &= (u * _COS[a] + v * _SIN[a]) <= dist
    return inside


def _star(u: torch.Tensor, v: torch.Tensor, outer: float = 0.98, inner: float = 0.42) -> torch.Tensor:
    """Five-pointed star as the union of five convex kites (centre, inner vertex, tip, inner vertex)."""
    inside = torch.zeros_like(u, dtype=torch.bool)
    for k in range(5):
        tip = -90 + 72 * k
        pts = [(0.0, 0.0), (inner * _COS[(tip - 36) % 360], inner * _SIN[(tip - 36) % 360]),
               (outer * _COS[tip % 360], outer * _SIN[tip % 360]),
               (inner * _COS[(tip + 36) % 360], inner * _SIN[(tip + 36) % 360])]
        kite = torch.ones_like(u, dtype=torch.bool)
        for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):   # counter-clockwise edges in (u, v)
            kite &= ((bx - ax) * (v - ay) - (by - ay) * (u - ax)) >= 0
        inside |= kite
    return inside


def _inside(cls: int, g: _Grid) -> torch.Tensor:
    """Bool [n, H, W]: which sub-samples of grid ``g`` fall inside shape class ``cls``."""
    u, v = g.u, g.v
    name = CLASS_NAMES[cls]
    if name == "circle":
        return u * u + v * v <= 0.85 * 0.85
    if name == "square":
        return (u.abs() <= 0.68) & (v.abs() <= 0.68)
    if name == "triangle":
        return _halfplanes(u, v, [90, 210, 330], 0.475)
    if name == "plus":
        au, av = u.abs(), v.abs()
        return ((au <= 0.3) & (av <= 0.9)) | ((au <= 0.9) & (av <= 0.3))
    if name == "star":
        return _star(u, v)
    if name == "ring":
        d2 = u * u + v * v
        return (d2 >= 0.5 * 0.5) & (d2 <= 0.9 * 0.9)
    if name == "crescent":                      # a disc with an offset disc bitten out of it
        bite_u = u - 0.42
        return (u * u + v * v <= 0.9 * 0.9) & (bite_u * bite_u + v * v > 0.72 * 0.72)
    if name == "diamond":
        return u.abs() / 0.55 + v.abs() / 0.92 <= 1.0
    raise ValueError(f"unknown shape class {cls}")


def _backgrounds(stream: int, idx: np.ndarray, kind: np.ndarray, colour: np.ndarray, size: int) -> torch.Tensor:
    """Int32 [n, 3, size, size] background textures: a pattern p in [0, 1] blends dark grey and the colour."""
    n = len(idx)
    idx = np.asarray(idx, np.int64)
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = centres[None, None, :], centres[None, :, None]
    t = [_uniform(stream, idx, _F_TEX, np.full(n, j))[:, None, None] for j in range(4)]
    p = np.full((n, size, size), 0.5)
    deg = (t[0] * 360).astype(np.int64)
    cos, sin = _COS[deg], _SIN[deg]
    along = x * cos + y * sin                                           # [n, size, size]
    sel = kind == BACKGROUNDS.index("noise")
    if sel.any():
        pix = np.arange(size * size, dtype=np.int64)[None, :]
        p[sel] = _uniform(stream, idx[sel][:, None], _F_NOISE, pix).reshape(-1, size, size)
    sel = kind == BACKGROUNDS.index("stripes")                         # triangle wave, 2-5 periods
    if sel.any():
        phase = along[sel] * (2 + 3 * t[1][sel]) + t[2][sel]
        p[sel] = np.abs((phase - np.floor(phase)) * 2 - 1)
    sel = kind == BACKGROUNDS.index("checker")                         # 2-5 cells per side, random offset
    if sel.any():
        cells = np.floor(2 + 4 * t[1][sel])
        cx = np.floor(x * cells + t[2][sel]).astype(np.int64)
        cy = np.floor(y * cells + t[3][sel]).astype(np.int64)
        p[sel] = ((cx + cy) % 2).astype(np.float64)
    sel = kind == BACKGROUNDS.index("gradient")
    if sel.any():
        p[sel] = np.clip(0.5 + (along[sel] - 0.5 * (cos[sel] + sin[sel])), 0.0, 1.0)
    base = BG_PALETTE[np.asarray(colour, np.int64)].astype(np.float64)[:, :, None, None]   # [n, 3, 1, 1]
    weight = (0.35 + 0.3 * p)[:, None]                                  # never as bright as the object
    img = DARK[None, :, None, None] + (base - DARK[None, :, None, None]) * weight
    return torch.from_numpy(np.floor(img + 0.5).astype(np.int32))


def _render(stream: int, idx: np.ndarray, labels: np.ndarray, colour: np.ndarray, background: np.ndarray,
            bg_colour: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, rot: np.ndarray,
            size: int) -> torch.Tensor:
    """uint8 [n, 3, size, size]: anti-aliased shapes (counted sub-samples) composited on their backgrounds."""
    n = len(idx)
    ss = 4 if size <= 64 else 2
    count = torch.zeros(n, size, size, dtype=torch.int32)
    w = min(size, int(math.ceil(2 * 0.98 * float(r.max()))) + 2)
    x0 = np.clip(np.floor(cx - w / 2).astype(np.int64), 0, size - w)
    y0 = np.clip(np.floor(cy - w / 2).astype(np.int64), 0, size - w)
    span = torch.arange(w)
    for cls in range(len(CLASS_NAMES)):
        sel = np.nonzero(labels == cls)[0]
        for start in range(0, len(sel), 256):                          # bounded memory: 256 windows at once
            part = sel[start:start + 256]
            g = _Grid(cx[part], cy[part], r[part], rot[part], x0[part], y0[part], w, ss)
            hits = _inside(cls, g).view(len(part), w, ss, w, ss).sum(dim=(2, 4), dtype=torch.int32)
            rows = torch.from_numpy(y0[part])[:, None, None] + span[None, :, None]
            cols = torch.from_numpy(x0[part])[:, None, None] + span[None, None, :]
            count[torch.from_numpy(part)[:, None, None], rows, cols] = hits
    bg = _backgrounds(stream, idx, background, bg_colour, size)
    fg = torch.from_numpy(PALETTE[colour]).to(torch.int32)[:, :, None, None]
    total = ss * ss
    count = count[:, None]
    return ((bg * (total - count) + fg * count + total // 2) // total).to(torch.uint8)


def _check_backgrounds(backgrounds: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """The background textures to draw from, in BACKGROUNDS order; an unknown name is an error listing them."""
    if backgrounds is None:
        return list(BACKGROUNDS)
    chosen = [backgrounds] if isinstance(backgrounds, str) else list(backgrounds)
    unknown = [b for b in chosen if b not in BACKGROUNDS]
    if unknown or not chosen:
        raise ValueError(f"'shapes': backgrounds={backgrounds!r} must name one or more of {BACKGROUNDS}")
    return [b for b in BACKGROUNDS if b in chosen]


@register("shapes")
def load_shapes(split: str = "train", *, n: int | None = None, seed: int = 0, size: int = 32,
                backgrounds: list[str] | tuple[str, ...] | str | None = None) -> ImageDataset:
    """``n`` images (default 10000 train / 2000 test) of ``size`` px (>= 16), deterministic from ``seed``.

    Labels are balanced: each block of 8 consecutive images holds every class once, in random order.
    ``backgrounds`` restricts the textures drawn (default: all of BACKGROUNDS). Textures with global structure
    (stripes, checker) are shared by two crops of one image, a shortcut a joint-embedding method can take
    instead of the shape; ``backgrounds=["flat", "noise", "gradient"]`` removes it.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"'shapes': size={size!r} is too small; shapes images need size >= 16 (default 32)")
    check_n("shapes", n)
    n = DEFAULT_N[split] if n is None else n
    stream = _stream(seed, split)
    k = len(CLASS_NAMES)
    idx = np.arange(n, dtype=np.int64)
    blocks = -(-n // k)
    order = _uniform(stream, np.arange(blocks * k, dtype=np.int64), _F_LABEL).reshape(blocks, k)
    labels = np.argsort(order, axis=1, kind="stable").reshape(-1)[:n]
    colour = np.floor(_uniform(stream, idx, _F_COLOUR) * len(COLOUR_NAMES)).astype(np.int64)
    bg_colour = np.floor(_uniform(stream, idx, _F_BGCOL) * len(BG_COLOUR_NAMES)).astype(np.int64)
    allowed = np.array([BACKGROUNDS.index(b) for b in _check_backgrounds(backgrounds)], dtype=np.int64)
    background = allowed[np.floor(_uniform(stream, idx, _F_BG) * len(allowed)).astype(np.int64)]
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * _uniform(stream, idx, _F_SCALE)
    pos_x = 2.0 * _uniform(stream, idx, _F_PX) - 1.0
    pos_y = 2.0 * _uniform(stream, idx, _F_PY) - 1.0
    rot = np.floor(_uniform(stream, idx, _F_ROT) * 360).astype(np.int64)
    r = scale * size
    room = size / 2 - 0.9 * r
    cx = size / 2 + pos_x * POS_RANGE * room
    cy = size / 2 + pos_y * POS_RANGE * room
    images = _render(stream, idx, labels, colour, background, bg_colour, cx, cy, r, rot, size)
    factors = {
        "colour": torch.from_numpy(colour), "background": torch.from_numpy(background),
        "background_colour": torch.from_numpy(bg_colour),
        "scale": torch.from_numpy(scale).float(), "pos_x": torch.from_numpy(pos_x).float(),
        "pos_y": torch.from_numpy(pos_y).float(), "rotation": torch.from_numpy(rot).float(),
    }
    names = {"colour": list(COLOUR_NAMES), "background": list(BACKGROUNDS), "background_colour": list(BG_COLOUR_NAMES)}
    return ImageDataset(images, torch.from_numpy(labels.astype(np.int64)), list(CLASS_NAMES), "shapes", split,
                        factors, names)


def object_masks(dataset: ImageDataset, supersample: int = 4, chunk: int = 256) -> torch.Tensor:
    """Where the shape is in each image of a ``shapes`` data set: float [N, H, W], the fraction of each pixel the
    shape covers (0 = background, 1 = object), rebuilt from the recorded label and factors (scale, pos_x, pos_y,
    rotation) with the renderer's own geometry (``supersample`` x ``supersample`` sub-samples per pixel).

    The factors are stored as float32, so edge pixels can differ from the rendered anti-aliasing by a sub-sample;
    the mask is meant for region statistics (e.g. the share of attention that falls on the object).
    """
    need = ("scale", "pos_x", "pos_y", "rotation")
    missing = [f for f in need if f not in dataset.factors]
    if missing:
        raise ValueError(f"object_masks needs a 'shapes' data set with factors {list(need)}; "
                         f"{dataset.name or 'this data set'!r} lacks {missing}")
    size = int(dataset.images.shape[-1])
    n = len(dataset)
    labels = dataset.labels.numpy().astype(np.int64)
    r = dataset.factors["scale"].double().numpy() * size
    room = size / 2 - 0.9 * r
    cx = size / 2 + dataset.factors["pos_x"].double().numpy() * POS_RANGE * room
    cy = size / 2 + dataset.factors["pos_y"].double().numpy() * POS_RANGE * room
    rot = np.round(dataset.factors["rotation"].double().numpy()).astype(np.int64)
    ss = int(supersample)
    out = torch.zeros(n, size, size, dtype=torch.float32)
    for cls in range(len(CLASS_NAMES)):
        sel = np.nonzero(labels == cls)[0]
        for start in range(0, len(sel), chunk):
            part = sel[start:start + chunk]
            zero = np.zeros(len(part), dtype=np.int64)
            g = _Grid(cx[part], cy[part], r[part], rot[part], zero, zero, size, ss)
            hits = _inside(cls, g).view(len(part), size, ss, size, ss).sum(dim=(2, 4), dtype=torch.int32)
            out[torch.from_numpy(part)] = hits.float() / (ss * ss)
    return out
