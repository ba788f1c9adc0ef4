"""Image helpers for the inspection views: tensors -> uint8 HWC arrays, grids with titles and notes, PNG bytes,
data URIs, heat-map colouring and alpha compositing, plotly figures to PNG (kaleido, or a small PIL renderer
without Chrome) and to HTML sharing one plotly.js per folder.

Arrays returned here are numpy uint8 [H, W, 3] (RGB) unless stated; inputs may be uint8 tensors
[C, H, W] / [B, C, H, W] (C = 1 or 3) or float tensors in [0, 1].
"""
from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
import torch

from workbench.inspect.colors import colormap, spec_colors, to_rgb


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image uint8/float [C, H, W] tensor (or HWC/HW numpy) -> uint8 [H, W, 3] RGB (gray repeated)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(f"to_hwc: expected an image [C, H, W], got shape {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        if arr.ndim == 2:
            arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised float images [B, C, H, W] -> uint8 [B, C, H, W] (inverse of ``workbench.augment.normalize``)."""
    c = x.shape[1]
    m = torch.as_tensor(list(mean) * (c if len(mean) == 1 else 1), dtype=torch.float32).view(1, -1, 1, 1)[:, :c]
    s = torch.as_tensor(list(std) * (c if len(std) == 1 else 1), dtype=torch.float32).view(1, -1, 1, 1)[:, :c]
    return ((x.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)


def upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an [H, W(, C)] array by an integer ``factor`` (crisp pixels for small images)."""
    if factor <= 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def display_scale(size: int, target: int = 128) -> int:
    """Integer zoom that shows a ``size`` px image at about ``target`` px."""
    return max(1, int(round(target / max(1, size))))


Line = str | tuple[str, tuple[int, int, int]]  # a line of text, optionally with its RGB colour
TEXT_COLOR = (33, 33, 33)


def text_font(size: int = 13) -> Any:
    """PIL's scalable default font at ``size`` px (FreeType; Pillow's fixed bitmap font where it lacks FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def wrap_text(text: str, font: Any, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px in ``font`` (at spaces; a longer word is split)."""
    out: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width or not line:
                line = candidate
            else:
                out.append(line)
                line = word
            while font.getlength(line) > width and len(line) > 1:  # one word wider than the space: split it
                cut = len(line) - 1
                while cut > 1 and font.getlength(line[:cut]) > width:
                    cut -= 1
                out.append(line[:cut])
                line = line[cut:]
        out.append(line)
    return out


def image_grid(cells: Sequence[Sequence[np.ndarray | None]], pad: int = 2, background: int = 255, *,
               titles: Sequence[Sequence[str | None] | None] | None = None,
               notes: Sequence[str | Sequence[Line] | None] | None = None, title: str | None = None,
               font_size: int = 13, note_width: int | None = None) -> np.ndarray:
    """Rows of uint8 HWC cells (None = empty) -> one uint8 [H, W, 3] picture sized to its content; cells are
    top-left aligned in equal-size slots (the largest cell of each column / row sets the slot).

    Optional text, in PIL's default font at ``font_size`` px and wrapped to the room it has: ``titles[i][j]``
    above cell (i, j); ``notes[i]`` beside row i (a string or a list of lines, each a string or (string, rgb)),
    in a column ``note_width`` px wide (default: the longest line, at most about 48 characters); ``title`` above
    everything. Without text the picture is the bare grid.
    """
    rows = [list(r) for r in cells]
    ncol = max((len(r) for r in rows), default=0)
    if not rows or ncol == 0:
        raise ValueError("image_grid: no cells to draw")
    col_w = [max((r[j].shape[1] for r in rows if j < len(r) and r[j] is not None), default=1) for j in range(ncol)]
    cell_h = [max((c.shape[0] for c in r if c is not None), default=1) for r in rows]
    has_text = bool(title) or any(t for t in (titles or ()) if t) or any(n for n in (notes or ()) if n)
    font = text_font(font_size) if has_text else None
    line_h = font_size + 4
    if has_text:
        pad = max(pad, 6)
    # text laid out first: it sets the row heights and the notes column
    title_lines = [[wrap_text(t, font, col_w[j]) if t else [] for j, t in enumerate(list(row_t or [])[:ncol])]
                   if has_text else [] for row_t in (list(titles or []) + [None] * len(rows))[:len(rows)]]
    note_lines: list[list[tuple[str, tuple[int, int, int]]]] = []
    for n in (list(notes or []) + [None] * len(rows))[:len(rows)]:
        lines = [n] if isinstance(n, str) else list(n or [])
        note_lines.append([(ln, TEXT_COLOR) if isinstance(ln, str) else (str(ln[0]), tuple(ln[1])) for ln in lines])
    nw = 0
    if any(note_lines):
        widest = max(font.getlength(t) for ls in note_lines for t, _ in ls)
        nw = int(note_width or min(widest, font.getlength("x" * 48)) + 1)
        note_lines = [[(w, c) for t, c in ls for w in wrap_text(t, font, nw)] for ls in note_lines]
    title_h = [(max((len(t) for t in tl), default=0) * line_h + (2 if any(tl) else 0)) for tl in title_lines] \
        if has_text else [0] * len(rows)
    row_h = [max(cell_h[i] + title_h[i], len(note_lines[i]) * line_h) for i in range(len(rows))]
    width = sum(col_w) + pad * (ncol + 1) + (nw + pad if nw else 0)
    header = wrap_text(title, font, width - 2 * pad) if title else []
    top = pad + len(header) * line_h if header else 0
    out = np.full((top + sum(row_h) + pad * (len(rows) + 1), width, 3), background, np.uint8)
    texts: list[tuple[int, int, str, tuple[int, int, int]]] = [(pad, pad + k * line_h, t, TEXT_COLOR)
                                                                for k, t in enumerate(header)]
    y = top + pad
    for i, r in enumerate(rows):
        x = pad
        for j in range(ncol):
            c = r[j] if j < len(r) else None
            lines = title_lines[i][j] if has_text and j < len(title_lines[i]) else []
            texts += [(x, y + k * line_h, t, TEXT_COLOR) for k, t in enumerate(lines)]
            if c is not None:
                c = to_hwc(c)
                out[y + title_h[i]:y + title_h[i] + c.shape[0], x:x + c.shape[1]] = c
            x += col_w[j] + pad
        texts += [(x, y + k * line_h, t, col) for k, (t, col) in enumerate(note_lines[i])]
        y += row_h[i] + pad
    if texts:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        for tx, ty, t, col in texts:
            draw.text((tx, ty), t, fill=col, font=font)
        out = np.asarray(pil).copy()
    return out


def png_bytes(image: np.ndarray | torch.Tensor) -> bytes:
    """uint8 image (HWC numpy or [C, H, W] tensor) -> PNG file bytes (PIL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_hwc(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3] (for tests and round trips)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def data_uri(png: bytes) -> str:
    """PNG bytes -> ``data:image/png;base64,...`` (for <img src> in HTML galleries and hover thumbnails)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_uri(image: torch.Tensor | np.ndarray, size: int = 64) -> str:
    """One image -> data URI of a PNG thumbnail about ``size`` px wide (nearest-neighbour zoom, never shrunk
    below the source resolution for small images)."""
    arr = to_hwc(image)
    return data_uri(png_bytes(upscale(arr, max(1, size // max(arr.shape[:2])))))


# ----------------------------------------------------------------------------------- heat maps, compositing
def minmax(x: np.ndarray | torch.Tensor, axis: Any = None) -> np.ndarray:
    """Min-max normalisation to [0, 1] (over ``axis``; constant input -> zeros)."""
    a = np.asarray(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    lo, hi = a.min(axis=axis, keepdims=True), a.max(axis=axis, keepdims=True)
    return np.where(hi > lo, (a - lo) / np.where(hi > lo, hi - lo, 1), 0.0).astype(np.float32)


def heat_rgba(heat: np.ndarray, opacity: float = 0.6, cmap: str = "inferno", weight_by_value: bool = False) -> np.ndarray:
    """Heat map [H, W] in [0, 1] -> float RGBA [H, W, 4]: colour from ``cmap``, alpha = ``opacity``
    (times the value when ``weight_by_value``, so low attention stays transparent)."""
    rgb = colormap(heat, cmap)
    alpha = np.full(heat.shape, float(opacity), np.float32)
    if weight_by_value:
        alpha = alpha * np.clip(heat, 0, 1)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def heat_picture(heat: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Heat map [H, W] in [0, 1] -> uint8 [H, W, 3] in colour map ``cmap`` (the map itself, beside its overlay)."""
    return (np.clip(colormap(np.asarray(heat, np.float32), cmap), 0, 1) * 255).round().astype(np.uint8)


def composite(image: np.ndarray | torch.Tensor, rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite a float RGBA layer [H, W, 4] over an image (uint8 HWC or [C, H, W]) -> uint8 [H, W, 3]
    (``out = (1 - a) * image + a * colour``)."""
    base = to_hwc(image).astype(np.float32) / 255.0
    if base.shape[:2] != rgba.shape[:2]:
        raise ValueError(f"composite: layer {rgba.shape[:2]} and image {base.shape[:2]} differ in size")
    a = rgba[..., 3:4]
    return (np.clip((1 - a) * base + a * rgba[..., :3], 0, 1) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray | torch.Tensor, heat: np.ndarray, opacity: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """Heat map [H, W] (any range: min-max normalised here) over ``image`` at ``opacity`` -> uint8 [H, W, 3]."""
    return composite(image, heat_rgba(minmax(heat), opacity, cmap))


def mask_overlay(image: np.ndarray | torch.Tensor, mask: np.ndarray, color: Sequence[int] = (255, 0, 0),
                 opacity: float = 0.5) -> np.ndarray:
    """Tint the pixels where bool ``mask`` [H, W] is True with ``color`` at ``opacity`` -> uint8 [H, W, 3]."""
    m = np.asarray(mask, dtype=np.float32)
    rgba = np.zeros(m.shape + (4,), np.float32)
    rgba[..., :3] = np.asarray(color, np.float32) / 255.0
    rgba[..., 3] = m * float(opacity)
    return composite(image, rgba)


# ----------------------------------------------------------------------------------- plotly figure -> PIL PNG
def figure_to_png_pil(fig: Any, width: int = 900, height: int = 600) -> bytes:
    """Render a plotly figure's image, scatter and line traces with PIL -> PNG bytes.

    The fallback of :func:`write_figure` where no browser can run kaleido: axes are placed from the layout's
    domains, data ranges from the traces; titles and subplot titles are drawn as text; no ticks or legends.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    layout = fig.layout
    title = getattr(layout.title, "text", None)
    top_margin = 30 if title else 10
    if title:
        draw.text((10, 8), str(title)[:140], fill=(0, 0, 0))
    plot_w, plot_h = width - 20, height - top_margin - 10

    def axis_domain(name: str) -> tuple[float, float]:
        ax = layout[name] if name in layout else None
        dom = getattr(ax, "domain", None) if ax is not None else None
        return (float(dom[0]), float(dom[1])) if dom else (0.0, 1.0)

    for ann in layout.annotations or ():
        if ann.text and ann.xref == "paper" and ann.yref == "paper":
            x = 10 + float(ann.x or 0) * plot_w - 4 * len(str(ann.text)) / 2
            y = top_margin + (1 - float(ann.y or 1)) * plot_h - 12
            draw.text((max(0, x), max(0, y)), str(ann.text)[:80], fill=(0, 0, 0))
    for trace in fig.data:
        xa = "xaxis" + (trace.xaxis[1:] if getattr(trace, "xaxis", None) and trace.xaxis != "x" else "")
        ya = "yaxis" + (trace.yaxis[1:] if getattr(trace, "yaxis", None) and trace.yaxis != "y" else "")
        (x0, x1), (y0, y1) = axis_domain(xa), axis_domain(ya)
        box = (10 + x0 * plot_w, top_margin + (1 - y1) * plot_h, 10 + x1 * plot_w, top_margin + (1 - y0) * plot_h)
        bw, bh = max(1, int(box[2] - box[0])), max(1, int(box[3] - box[1]))
        if trace.type == "image":
            if trace.z is None:
                continue
            arr = to_hwc(np.asarray(trace.z, dtype=np.uint8))
            scale = min(bw / arr.shape[1], bh / arr.shape[0])
            img = Image.fromarray(arr).resize((max(1, int(arr.shape[1] * scale)), max(1, int(arr.shape[0] * scale))),
                                              Image.NEAREST)
            canvas.paste(img, (int(box[0]), int(box[1])))
            continue
        if trace.type not in ("scatter", "scattergl") or trace.x is None or trace.y is None:
            continue
        xs = np.asarray(trace.x, dtype=np.float64)
        ys = np.asarray(trace.y, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            continue
        draw.rectangle(box, outline=(200, 200, 200))
        same = [t for t in fig.data if getattr(t, "xaxis", None) == getattr(trace, "xaxis", None)
                and getattr(t, "yaxis", None) == getattr(trace, "yaxis", None) and t.x is not None and t.y is not None
                and t.type in ("scatter", "scattergl")]
        allx = np.concatenate([np.asarray(t.x, dtype=np.float64) for t in same])
        ally = np.concatenate([np.asarray(t.y, dtype=np.float64) for t in same])
        fx, fy = allx[np.isfinite(allx)], ally[np.isfinite(ally)]
        lx, hx = (fx.min(), fx.max()) if fx.size else (0, 1)
        ly, hy = (fy.min(), fy.max()) if fy.size else (0, 1)
        px = box[0] + 4 + (xs - lx) / ((hx - lx) or 1) * (bw - 8)
        py = box[3] - 4 - (ys - ly) / ((hy - ly) or 1) * (bh - 8)
        marker = getattr(trace, "marker", None)
        colors = getattr(marker, "color", None) if marker is not None else None
        line_color = to_rgb(getattr(getattr(trace, "line", None), "color", None),
                            to_rgb(colors if isinstance(colors, str) else None))
        mode = trace.mode or "lines"
        if "lines" in mode:
            pts = [(float(a), float(b)) for a, b, k in zip(px, py, ok) if k]
            if len(pts) > 1:
                draw.line(pts, fill=line_color, width=2)
        if "markers" in mode:
            per_point = colors if isinstance(colors, (list, tuple, np.ndarray)) and len(colors) == len(xs) else None
            if per_point is not None and not isinstance(per_point[0], str):
                per_point = spec_colors(marker)
            r = 1 if len(xs) > 2000 else 2
            for i in np.flatnonzero(ok):
                c = to_rgb(per_point[i]) if per_point is not None else line_color
                draw.ellipse((px[i] - r, py[i] - r, px[i] + r, py[i] + r), fill=c)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def browser_path() -> str | None:
    """The Chrome/Chromium that kaleido drives, found as choreographer finds it (``BROWSER_PATH`` if the user
    set it, then PATH and the usual install paths such as /usr/bin/chromium, then kaleido's own download);
    None where there is none."""
    from choreographer.browsers import Chromium

    return Chromium.find_browser(skip_local=False)


def palette_png(png: bytes, colors: int = 256) -> bytes:
    """A figure's PNG re-encoded with a palette of at most ``colors`` colours (median cut, no dithering; any
    transparency flattened onto white): about a third of the bytes of kaleido's RGBA output and no visible change
    for plots (flat fills, thin lines, text). Pictures of data (image grids, maps) are not passed through this:
    they keep every colour."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")
    buf = io.BytesIO()
    flat.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG",
                                                                                          optimize=True)
    return buf.getvalue()


def figure_png(fig: Any, width: int | None = None, height: int | None = None) -> tuple[bytes, str]:
    """PNG bytes of a plotly figure and how they were made: kaleido renders it in the browser of
    :func:`browser_path` (passed to kaleido as its browser path; the process environment is left alone) ->
    "kaleido"; where no browser exists, or it does not start, a RuntimeWarning says so and
    :func:`figure_to_png_pil` draws the figure's images and curves -> "pil". ``width``/``height`` default to the
    figure's layout size, else 900 x 600. Encoded with a palette (:func:`palette_png`): figures stay small in the
    notebooks and run folders that hold them."""
    import warnings

    width = int(width or fig.layout.width or 900)
    height = int(height or fig.layout.height or 600)
    browser = browser_path()
    if browser is not None:
        import kaleido
        from choreographer.browsers import BrowserDepsError, BrowserFailedError

        try:
            data = kaleido.calc_fig_sync(fig, opts=dict(format="png", width=width, height=height, scale=1),
                                         kopts=dict(path=browser))
            return palette_png(data), "kaleido"
        except (BrowserFailedError, BrowserDepsError) as e:
            why = f"the browser {browser} did not start ({type(e).__name__}: {str(e)[:120]})"
    else:
        why = "no Chrome or Chromium was found (install chromium, or run kaleido_get_chrome)"
    warnings.warn(f"PNG export through kaleido impossible: {why}; drew the figure with the PIL renderer "
                  f"(images and curves only)", RuntimeWarning, stacklevel=3)
    return palette_png(figure_to_png_pil(fig, width, height)), "pil"


PLOTLY_JS = "plotly.min.js"


def write_figure(fig: Any, path: str, width: int | None = None, height: int | None = None) -> str:
    """Write a plotly figure to ``.html`` or ``.png``; returns how ("html", "kaleido" or "pil").

    HTML loads plotly.js from ``plotly.min.js`` beside it (written once per folder, so every figure of a run
    folder shares one copy; opens offline). PNG: :func:`figure_png`.
    """
    from pathlib import Path

    from workbench.runs import atomic_write_bytes

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".html", ".htm"):
        js = p.parent / PLOTLY_JS
        if not js.exists():
            from plotly.offline import get_plotlyjs

            atomic_write_bytes(js, get_plotlyjs().encode())
        atomic_write_bytes(p, fig.to_html(include_plotlyjs="directory", full_html=True).encode())
        return "html"
    if suffix != ".png":
        raise ValueError(f"save: unsupported file type {suffix!r} for {path}; use .html or .png")
    data, how = figure_png(fig, width, height)
    atomic_write_bytes(p, data)
    return how
