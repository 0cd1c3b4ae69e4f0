"""One procedural solar-eclipse photograph (`render_eclipse`; `CLASSES`: annular, partial, total), the Sun's disk
it will draw (`sun_disk`), and the Keras-style augmentation (`augment_keras_style`, its draws: `keras_transform`)
the real set's images went through.

Each image is a small physical scene: a limb-darkened Sun, the Moon in front of it, corona and prominences during
totality, then the camera: solar filter tint, exposure, glare, thin clouds, a horizon silhouette, blur and sensor
noise. A fixed share of every class is deliberately hard (deep partials that look annular, thin broken rings,
blown-out totals) so that a small CNN cannot score 100%. Pure numpy and scipy, from the generator it is given.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from cnnlab.errors import UserError

CLASSES = ("Annular_solar_eclipse", "Partial_solar_eclipse", "Total_solar_eclipse")
KINDS = ("annular", "partial", "total")
SPLITS = ("train", "test")

# Bump when the renderer changes: an old output folder then no longer counts as "the same set".
GENERATOR_VERSION = 1
JPEG_QUALITY = 75
MIN_SIZE = 32
SUPERSAMPLE = 2  # render at 2x and downsample with Pillow: cheap anti-aliasing of thin rings

# Share of each class rendered as a deliberately confusable case (see docs/results/synthetic-eclipse.md).
HARD_FRACTION = {"partial": 0.22, "annular": 0.22, "total": 0.2}
TOTAL_OVEREXPOSED_SHARE = 0.6  # of the hard totals; the rest are short exposures
# Degradations applied to any class, independently of each other.
CLOUD_FRACTION = 0.22
HORIZON_FRACTION = 0.15
PROMINENCE_FRACTION = 0.6  # of totals
DIAMOND_RING_FRACTION = 0.25  # of totals
CLOUD_BAND_FRACTION = 0.08  # a dense cloud streak across the disk; always on hard annulars
HEAVY_BLUR_FRACTION = 0.06
HEAVY_NOISE_FRACTION = 0.05

# Sun tints through common filters (linear RGB multipliers): orange/red glass, yellow, neutral white.
_FILTER_TINTS = (
    ((1.0, 0.42, 0.06), (1.0, 0.62, 0.16)),  # orange
    ((1.0, 0.78, 0.30), (1.0, 0.92, 0.50)),  # yellow
    ((0.95, 0.95, 0.90), (1.0, 1.0, 1.0)),  # neutral density, white
)
_FILTER_TINT_P = (0.45, 0.35, 0.20)


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of an n x n image, cached because every image reuses them."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _coverage(dist: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased disk mask: 1 inside, 0 outside, a one-pixel linear ramp across the edge."""
    return np.clip(radius - dist + 0.5, 0.0, 1.0)


def _moon_geometry(kind: str, hard: bool, rng: np.random.Generator) -> tuple[float, float]:
    """Moon radius and centre offset, both in units of the Sun's radius, for one eclipse kind.

    Partial: the limbs cross (|1-k| < d < 1+k).  Annular: the Moon sits inside (k < 1, d < 1-k).
    Total: the Moon covers the Sun (k >= 1, d <= k-1).
    """
    if kind == "partial":
        if hard:
            # Deep partial just past the annular/total limit: either a ring with a narrow gap (k < 1)
            # or a hairline crescent (k >= 1).  Only the gap or the crescent shape tells the class.
            # The gap's arc grows like the square root of the overshoot, so it must stay tiny.
            if rng.random() < 0.6:
                k = rng.uniform(0.9, 0.97)
                return k, 1.0 - k + rng.uniform(0.003, 0.03)
            k = rng.uniform(1.0, 1.06)
            return k, k - 1.0 + rng.uniform(0.01, 0.08)
        k = rng.uniform(0.93, 1.08)
        magnitude = rng.uniform(0.12, 0.88 * min(1.0, k))  # share of the Sun's diameter covered
        return k, 1.0 + k - 2.0 * magnitude
    if kind == "annular":
        if hard:
            # Thin ring, moon off-centre: the ring nearly vanishes on one side.
            k = rng.uniform(0.94, 0.975)
            return k, (1.0 - k) * rng.uniform(0.55, 0.9)
        k = rng.uniform(0.84, 0.95)
        return k, (1.0 - k) * rng.uniform(0.0, 0.7)
    k = rng.uniform(1.0, 1.08)
    return k, (k - 1.0) * rng.uniform(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Light sources (linear radiance maps, H x W or H x W x 3)
# --------------------------------------------------------------------------------------------------


def _photosphere(rho: np.ndarray, sun_cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Limb-darkened disk I = 1 - u(1 - mu), with mu the cosine of the viewing angle on the sphere."""
    u = rng.uniform(0.45, 0.75)
    mu = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
    return (1.0 - u * (1.0 - mu)) * sun_cov


def _sunspots(rho, theta, rng: np.random.Generator) -> np.ndarray:
    """A few small dark umbrae: multiplicative factor, 1 where there is no spot."""
    factor = np.ones_like(rho)
    for _ in range(rng.integers(1, 4)):
        r0, t0, size = rng.uniform(0.1, 0.8), rng.uniform(-np.pi, np.pi), rng.uniform(0.03, 0.07)
        dy = rho * np.sin(theta) - r0 * np.sin(t0)
        dx = rho * np.cos(theta) - r0 * np.cos(t0)
        factor *= 1.0 - 0.75 * np.exp(-(dx * dx + dy * dy) / (size * size))
    return factor


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angle difference folded into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _angular_rays(theta: np.ndarray, rng: np.random.Generator, n_terms: int = 40) -> np.ndarray:
    """Fine radial texture of the corona (polar plumes, rays): a random Fourier series in angle."""
    j = np.arange(2, n_terms + 2)
    amp = rng.normal(0.0, 1.0, n_terms) / j**0.7
    phase = rng.uniform(0, 2 * np.pi, n_terms)
    # Evaluated on a fine 1-D table of angles and interpolated: 40 cosines per pixel would dominate.
    table_theta = np.linspace(-np.pi, np.pi, 2049)
    series = (amp * np.cos(np.outer(table_theta, j) + phase)).sum(axis=1)
    table = 1.0 + 0.35 * series / (np.abs(series).max() + 1e-6)
    return np.interp(theta, table_theta, table).astype(np.float32)


def _corona(rho: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White-light corona: steep inner K-corona, power-law falloff, helmet streamers, ray texture."""
    r = np.maximum(rho, 1.0)
    falloff = rng.uniform(2.6, 4.0)
    corona = 0.6 * r**-falloff + 0.5 * np.exp(-(r - 1.0) / rng.uniform(0.04, 0.1))
    # Streamers fall off more slowly than the background and narrow with height.
    for _ in range(rng.integers(2, 7)):
        t0, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.12, 0.35)
        dtheta = _wrap(theta - t0)
        shape = np.exp(-((dtheta * r**0.6 / width) ** 2))
        corona += rng.uniform(0.15, 0.45) * shape * r ** -rng.uniform(1.5, 2.4)
    return corona * _angular_rays(theta, rng) * (rho >= 0.98)


def _prominences(rho, theta, rng: np.random.Generator) -> np.ndarray:
    """Pink-red flames just above the limb: small elongated blobs (H x W)."""
    out = np.zeros_like(rho)
    for _ in range(rng.integers(1, 5)):
        t0, height = rng.uniform(-np.pi, np.pi), rng.uniform(0.025, 0.09)
        dtheta = _wrap(theta - t0)
        width = rng.uniform(0.03, 0.1)
        out += rng.uniform(0.6, 2.0) * np.exp(-((dtheta / width) ** 2) - ((rho - 1.0) / height) ** 2)
    return out * (rho >= 1.0)


def _bead(y, x, by: float, bx: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-ring bead: a point of photosphere, its glare and a few diffraction spikes."""
    dy, dx = y - by, x - bx
    d2 = dx * dx + dy * dy
    d = np.sqrt(d2)
    size = rng.uniform(0.03, 0.07) * radius
    glow = 40.0 * np.exp(-d2 / size**2) + 2.0 * np.exp(-d / (0.2 * radius))
    n_spikes = int(rng.choice([4, 6, 8]))
    angle = np.arctan2(dy, dx)
    spike_dir = np.abs(np.cos(n_spikes / 2 * (angle - rng.uniform(0, np.pi))))
    spikes = spike_dir**800 * np.exp(-d / rng.uniform(0.15, 0.5) / radius)
    return glow + rng.uniform(0.0, 1.0) * spikes


def _cloud_band(y, x, geo, rng: np.random.Generator) -> np.ndarray:
    """Transmission of one dense cloud streak crossing the disk: dims an arc of a ring, or part of
    a crescent, so a broken annular ring and a partial's crescent can look alike."""
    cy, cx, radius, _, _ = geo
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(0.3, 1.0) * radius  # passes over the limb, not the centre
    dist = (x - cx) * np.sin(angle) - (y - cy) * np.cos(angle) - offset
    width = rng.uniform(0.15, 0.5) * radius
    depth = rng.uniform(0.7, 0.98)
    return (1.0 - depth * np.exp(-((dist / width) ** 2)))[..., None]


def _fractal_noise(n: int, rng: np.random.Generator, base: int = 3, octaves: int = 4) -> np.ndarray:
    """Smooth random field in [0, 1], stretched horizontally like layered cloud (n x n)."""
    field = np.zeros((n, n), dtype=np.float32)
    for o in range(octaves):
        cells = base * 2**o
        coarse = rng.random((cells * 2, cells)).astype(np.float32)  # more rows: horizontal streaks
        layer = Image.fromarray(coarse).resize((n, n), Image.Resampling.BICUBIC)
        field += np.asarray(layer) / 2**o
    field -= field.min()
    return field / (field.max() + 1e-6)


def _bloom(light: np.ndarray, sigma_frac: float) -> np.ndarray:
    """Wide glare around bright sources, blurred on a 4x smaller grid because it is smooth anyway."""
    n = light.shape[0]
    m = max(n // 4, 8)
    channels = []
    for c in range(light.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(light[..., c], dtype=np.float32))
        small = np.asarray(plane.resize((m, m), Image.Resampling.BOX))
        small = ndimage.gaussian_filter(small, sigma_frac * m, mode="constant")
        channels.append(np.asarray(Image.fromarray(small).resize((n, n), Image.Resampling.BILINEAR)))
    return np.stack(channels, axis=-1)


# --------------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------------


def _sky(y, n: int, style: str, rng: np.random.Generator) -> np.ndarray:
    """Background sky (H x W x 3) in display-linear units, i.e. after the exposure set for the Sun:
    black behind a filter, deep blue in totality, warm at dusk, pale where the bare Sun saturates."""
    t = (y / n)[..., None]  # 0 at top, 1 at bottom
    if style == "filter":
        return np.broadcast_to(np.float32(rng.uniform(0.0, 0.004)), (*y.shape, 3)).copy()
    if style == "totality":
        top = np.array([0.002, 0.004, 0.01]) * rng.uniform(0.2, 2.5)
        bottom = np.array([0.05, 0.025, 0.015]) * rng.uniform(0.0, 1.0)  # 360-degree twilight glow
        return (top + (bottom - top) * t**3).astype(np.float32)
    if style == "dusk":
        top = np.array([0.01, 0.01, 0.03]) * rng.uniform(0.5, 2.0)
        bottom = np.array([0.5, 0.18, 0.05]) * rng.uniform(0.2, 0.8)
        return (top + (bottom - top) * t**1.5).astype(np.float32)
    top = np.array([0.01, 0.02, 0.05]) * rng.uniform(0.3, 2.0)  # "bare": daylight, Sun over-exposed
    return np.broadcast_to(top.astype(np.float32), (*y.shape, 3)).copy()


def _horizon_mask(x, y, n: int, sun_y: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """1 above a hills-and-trees skyline, 0 on the ground.

    The skyline may hide up to about half of the Sun, never all of it: a hidden Sun is no
    eclipse photograph, just an unlearnable label.
    """
    xs = x[0] / n
    top = min((sun_y + radius * rng.uniform(0.1, 1.3)) / n + rng.uniform(0.0, 0.15), 0.97)
    profile = np.full_like(xs, top)
    for f in (1.5, 3.0, 7.0):
        profile += rng.uniform(0.0, 0.04) * np.sin(2 * np.pi * (f * xs + rng.random()))
    trees = np.asarray(
        Image.fromarray(rng.random((1, 48)).astype(np.float32)).resize((n, 1), Image.Resampling.BILINEAR)
    )[0]
    profile -= rng.uniform(0.0, 0.06) * trees**3
    return np.clip(profile[None, :] * n - y + 0.5, 0.0, 1.0)[..., None]


def _pick_style(kind: str, rng: np.random.Generator) -> str:
    """How it was photographed.  Totality is shot without a filter; the rest mostly through one."""
    if kind == "total":
        return "totality"
    return str(rng.choice(["filter", "dusk", "bare"], p=[0.68, 0.2, 0.12]))


def _filter_tint(style: str, rng: np.random.Generator) -> np.ndarray:
    if style == "dusk":  # low Sun seen through thick air: deep orange-red even without a filter
        return np.array([1.0, rng.uniform(0.3, 0.55), rng.uniform(0.03, 0.12)], dtype=np.float32)
    if style == "bare":
        return np.array([1.0, 0.97, 0.9], dtype=np.float32)
    lo, hi = _FILTER_TINTS[rng.choice(len(_FILTER_TINTS), p=_FILTER_TINT_P)]
    return rng.uniform(lo, hi).astype(np.float32)


def _exposure(kind: str, style: str, hard: bool, rng: np.random.Generator) -> float:
    """Camera gain applied to linear radiance; totals are exposed for the faint corona."""
    if kind == "total" and hard:
        # Over-exposed: the corona blows out into a wide white halo.  Short exposure: only the
        # bright inner corona survives, a thin white ring much like an unfiltered annular's.
        return rng.uniform(10.0, 30.0) if rng.random() < TOTAL_OVEREXPOSED_SHARE else rng.uniform(0.25, 0.6)
    if kind == "total":
        return rng.uniform(0.8, 4.0)
    if style == "bare":
        return rng.uniform(6.0, 20.0)
    return rng.uniform(0.8, 2.2)


def _scene_light(kind, style, geo, y, x, rng: np.random.Generator) -> np.ndarray:
    """Linear radiance of Sun, Moon, corona and prominences (H x W x 3), before the atmosphere."""
    cy, cx, radius, moon_k, moon_d = geo
    moon_angle = rng.uniform(-np.pi, np.pi)
    my, mx = cy + moon_d * radius * np.sin(moon_angle), cx + moon_d * radius * np.cos(moon_angle)
    sy, sx = y - cy, x - cx
    rho = np.sqrt(sx * sx + sy * sy) / radius
    theta = np.arctan2(sy, sx)
    moon_cov = _coverage(np.sqrt((x - mx) ** 2 + (y - my) ** 2), moon_k * radius)
    sun = _photosphere(rho, _coverage(rho * radius, radius), rng) * (1.0 - moon_cov)
    if kind != "total" and style == "filter" and rng.random() < 0.3:
        sun *= _sunspots(rho, theta, rng)
    light = sun[..., None] * _filter_tint(style, rng)
    if kind == "total":
        light += _totality_light(rho, theta, moon_cov, (my, mx), geo, y, x, rng)
    return light


def _totality_light(rho, theta, moon_cov, moon_centre, geo, y, x, rng: np.random.Generator) -> np.ndarray:
    """Corona, prominences and the optional diamond-ring bead; all hidden where the Moon is."""
    cy, cx, radius, _, _ = geo
    visible = (1.0 - moon_cov)[..., None]
    corona_colour = rng.uniform([0.9, 0.9, 0.9], [1.0, 1.0, 1.08]).astype(np.float32)
    light = 0.15 * _corona(rho, theta, rng)[..., None] * corona_colour
    if rng.random() < PROMINENCE_FRACTION:
        light += 0.05 * _prominences(rho, theta, rng)[..., None] * np.array([1.0, 0.2, 0.35], np.float32)
    light *= visible
    if rng.random() < DIAMOND_RING_FRACTION:
        # Bead where the Sun's limb is about to reappear: opposite the Moon's offset from the Sun.
        my, mx = moon_centre
        angle = np.arctan2(cy - my, cx - mx) if (my, mx) != (cy, cx) else rng.uniform(-np.pi, np.pi)
        by, bx = cy + radius * np.sin(angle), cx + radius * np.cos(angle)
        light += (0.05 * _bead(y, x, by, bx, radius, rng))[..., None]
    return light


def _atmosphere(light, sky, n, y, x, geo, rng: np.random.Generator):
    """Thin cloud (dims the Sun, scatters a halo) and a dark horizon; returns radiance and tags.

    `light` is already multiplied by the exposure, `sky` is in the same display-linear units.
    """
    tags = []
    bloom = _bloom(light, rng.uniform(0.02, 0.06))
    total = sky + light + rng.uniform(0.05, 0.3) * bloom
    if rng.random() < CLOUD_FRACTION:
        cloud = _fractal_noise(n, rng)
        cloud = np.clip((cloud - rng.uniform(0.2, 0.5)) * 2.0, 0.0, 1.0)[..., None]
        opacity = rng.uniform(0.4, 0.95)
        scatter = _bloom(light, rng.uniform(0.08, 0.2)) * rng.uniform(1.0, 4.0)
        total = total * (1.0 - opacity * cloud) + cloud * (scatter + 0.5 * sky)
        tags.append("clouds")
    if rng.random() < HORIZON_FRACTION:
        cy, _, radius, _, _ = geo
        mask = _horizon_mask(x, y, n, cy, radius, rng)
        ground = np.array([0.01, 0.008, 0.006], np.float32) * rng.uniform(0.0, 1.0)
        total = total * mask + ground * (1.0 - mask)
        tags.append("horizon")
    return total, tags


def _tone_map(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera response: a soft or hard highlight shoulder, then display gamma, to uint8."""
    v = 1.0 - np.exp(-1.6 * v) if rng.random() < 0.5 else np.clip(v, 0.0, 1.0)
    return (np.clip(v, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)


def _sun_placement(n: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Sun centre and radius in render pixels: from a small disk in a wide field to a frame-filler."""
    radius = rng.uniform(0.13, 0.4) * n
    margin = radius * rng.uniform(0.7, 1.2)
    cy = rng.uniform(min(margin, n / 2), max(n - margin, n / 2))
    cx = rng.uniform(min(margin, n / 2), max(n - margin, n / 2))
    return cy, cx, radius


def _camera_finish(img: np.ndarray, size: int, rng: np.random.Generator, tags: list) -> np.ndarray:
    """Downsample to the target size, then lens/motion blur and sensor noise."""
    pil = Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS)
    heavy_blur = rng.random() < HEAVY_BLUR_FRACTION
    blur = rng.uniform(1.5, 3.0) * size / 128 if heavy_blur else rng.uniform(0.0, 0.9) * size / 128
    if blur > 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    heavy_noise = rng.random() < HEAVY_NOISE_FRACTION
    sigma = rng.uniform(12.0, 25.0) if heavy_noise else rng.uniform(0.5, 5.0)
    out = np.asarray(pil, dtype=np.float32)
    luma_noise = rng.normal(0.0, sigma, out.shape[:2])[..., None]
    chroma_noise = rng.normal(0.0, sigma * 0.4, out.shape)
    tags += ["heavy_blur"] * heavy_blur + ["heavy_noise"] * heavy_noise
    return np.clip(out + luma_noise + chroma_noise + 0.5, 0, 255).astype(np.uint8)


def _kind_of(kind: str) -> str:
    if kind in KINDS:
        return kind
    if kind in CLASSES:
        return KINDS[CLASSES.index(kind)]
    raise UserError(f"unknown eclipse kind '{kind}' (choose from: {', '.join(KINDS + CLASSES)})")


def _layout(kind: str, rng: np.random.Generator, n: int) -> tuple[bool, str, tuple[float, float, float]]:
    """The first draws of a render: hard case or not, photographic style, the Sun's centre and radius."""
    return rng.random() < HARD_FRACTION[kind], _pick_style(kind, rng), _sun_placement(n, rng)


def sun_disk(kind: str, rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    """The Sun's disk (centre y, x and radius, in pixels of the size x size image, whose pixel j spans [j, j+1])
    that `render_eclipse(kind, rng, size)` would draw from a generator in this state; advances `rng`."""
    cy, cx, radius = _layout(_kind_of(kind), rng, size * SUPERSAMPLE)[2]
    return cy / SUPERSAMPLE, cx / SUPERSAMPLE, radius / SUPERSAMPLE


def render_eclipse_tagged(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """`render_eclipse` plus tags naming the hard case and degradations that were drawn."""
    kind = _kind_of(kind)
    n = size * SUPERSAMPLE
    y, x = _grid(n)
    hard, style, (cy, cx, radius) = _layout(kind, rng, n)
    moon_k, moon_d = _moon_geometry(kind, hard, rng)
    geo = (cy, cx, radius, moon_k, moon_d)
    light = _scene_light(kind, style, geo, y, x, rng) * _exposure(kind, style, hard, rng)
    banded = (hard and kind == "annular") or rng.random() < CLOUD_BAND_FRACTION
    if banded:
        light *= _cloud_band(y, x, geo, rng)
    radiance, tags = _atmosphere(light, _sky(y, n, style, rng), n, y, x, geo, rng)
    img = _tone_map(radiance, rng)
    tags = ([f"hard_{kind}"] if hard else []) + [style] + ["cloud_band"] * banded + tags
    return _camera_finish(img, size, rng, tags), tags


def render_eclipse(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One eclipse photograph (size x size x 3 uint8) before augmentation.
    kind: "annular", "partial", "total" or one of CLASSES."""
    return render_eclipse_tagged(kind, rng, size)[0]


# --------------------------------------------------------------------------------------------------
# Keras ImageDataGenerator-style augmentation
# --------------------------------------------------------------------------------------------------


def keras_transform(shape, rng: np.random.Generator, rotation_range=30.0, shift_range=0.12, zoom_range=0.15):
    """The draws of `augment_keras_style` for an image of this shape: (A, offset, flip). Output pixel o samples
    input pixel i = A (o - c) + c + t = A o + offset (array indices), then the output is mirrored left-right if flip."""
    h, w = shape[:2]
    angle = np.deg2rad(rng.uniform(-rotation_range, rotation_range))
    zy, zx = rng.uniform(1 - zoom_range, 1 + zoom_range, size=2)
    ty, tx = rng.uniform(-shift_range, shift_range, size=2) * (h, w)
    cos, sin = np.cos(angle), np.sin(angle)
    a = np.array([[cos * zy, -sin * zx], [sin * zy, cos * zx]])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    return a, centre - a @ centre + (ty, tx), bool(rng.random() < 0.5)


def augment_keras_style(img: np.ndarray, rng: np.random.Generator, **ranges) -> np.ndarray:
    """Random rotation, shift, zoom and horizontal flip with nearest-pixel fill, as Keras does: one affine map about
    the image centre, bilinear sampling, pixels mapped from outside the image copy the nearest edge pixel (like
    ImageDataGenerator.apply_transform, fill_mode="nearest"). `ranges`: rotation_range (degrees), shift_range (share
    of the side), zoom_range; the draws are those of `keras_transform`."""
    a, offset, flip = keras_transform(img.shape, rng, **ranges)
    matrix = np.eye(3)
    matrix[:2, :2] = a
    out = ndimage.affine_transform(img, matrix, offset=(*offset, 0.0), order=1, mode="nearest")
    return np.ascontiguousarray(out[:, ::-1] if flip else out)
