"""`digits`: a built-in, MNIST-shaped dataset drawn procedurally, so it needs no file and no network.

Each sample is one of ten digit glyphs, written as strokes (line segments, and arcs cut into
segments), bent by a smooth random warp, placed by a random affine map (rotation, scale, aspect,
shear, shift), drawn with a random stroke width and ink level, and sprinkled with noise. As in
MNIST the ink is white on black, the glyph is about 20 px tall, and the image is 1x28x28 uint8.

The same seed gives bit-identical tensors: every random number comes from a private
torch.Generator (so the training RNG is left alone), all of them are drawn before rendering (so
the chunk size does not matter), and rendering uses only elementwise ops and `min`.

Difficulty is calibrated to be learnable but not trivial: on the default splits, LeNet trained
for one epoch (SGD lr 0.05, momentum 0.9, batch 100) reaches about 98% test accuracy, a linear
classifier (Adam, 3 epochs) about 90%. Shifts of up to 3 pixels are what keep the latter low.
"""

import contextlib
import math
import os
import tempfile
from pathlib import Path

import torch

CLASS_NAMES = tuple(str(i) for i in range(10))

# Measured over the default train split, load_digits(seed=0): images.float().div(255).mean()/.std().
MEAN = 0.1381
STD = 0.2720

VERSION = 1  # bump whenever the generator changes: the cache file name carries it

SIDE = 28  # image height and width in pixels
GLYPH_HEIGHT = 20.0  # pixels spanned by one glyph unit (MNIST digits fit a 20x20 box)
CHUNK = 4096  # images rendered at once: fewer, larger ops cost less than many small ones

# Glyphs, in units: x right, y down, the glyph spans y in [-0.5, 0.5] and is about 0.6 wide.
# A stroke is a polyline [(x, y), ...] or an elliptic arc ("arc", cx, cy, rx, ry, from_deg, to_deg);
# with y down, angle 0 points right, 90 down, 270 up. A class may have several variants.
GLYPHS = {
    0: [[("arc", 0.0, 0.0, 0.3, 0.5, 0, 360)]],
    1: [
        [[(0.02, -0.5), (0.0, 0.5)]],
        [[(-0.15, -0.33), (0.02, -0.5), (0.0, 0.5)]],  # with a flag
    ],
    2: [
        [("arc", 0.0, -0.22, 0.28, 0.28, 170, 385), [(0.25, -0.1), (-0.3, 0.5), (0.32, 0.5)]],
        [("arc", 0.0, -0.2, 0.28, 0.3, 180, 390), ("arc", 0.35, 0.55, 0.65, 0.65, 250, 180)]
        + [[(-0.3, 0.55), (0.3, 0.5)]],  # curved neck
    ],
    3: [
        [("arc", 0.0, -0.26, 0.25, 0.24, 200, 450), ("arc", 0.0, 0.24, 0.28, 0.26, 270, 520)],
        [[(-0.25, -0.5), (0.25, -0.5), (-0.02, -0.05)], ("arc", 0.0, 0.21, 0.28, 0.29, 270, 520)],
    ],
    4: [
        [[(0.15, 0.5), (0.15, -0.5), (-0.32, 0.18), (0.32, 0.18)]],  # closed
        [[(-0.2, -0.5), (-0.28, 0.12), (0.3, 0.12)], [(0.15, -0.3), (0.15, 0.5)]],  # open
    ],
    5: [[[(0.28, -0.5), (-0.18, -0.5), (-0.24, -0.04)], ("arc", 0.0, 0.2, 0.3, 0.3, 232, 500)]],
    6: [[("arc", 0.25, 0.2, 0.5, 0.7, 258, 180), ("arc", 0.0, 0.22, 0.25, 0.28, 0, 360)]],
    7: [
        [[(-0.3, -0.5), (0.3, -0.5), (-0.05, 0.5)]],
        [[(-0.3, -0.5), (0.3, -0.5), (-0.05, 0.5)], [(-0.12, 0.02), (0.24, 0.02)]],  # crossed
    ],
    8: [[("arc", 0.0, -0.26, 0.22, 0.24, 0, 360), ("arc", 0.0, 0.24, 0.27, 0.26, 0, 360)]],
    9: [
        [("arc", 0.0, -0.22, 0.26, 0.28, 0, 360), [(0.26, -0.22), (0.2, 0.5)]],
        [("arc", 0.0, -0.22, 0.26, 0.28, 0, 360), ("arc", -0.3, -0.22, 0.56, 0.72, 0, 90)],
    ],
}


def _stroke_points(stroke) -> list[tuple[float, float]]:
    """A stroke as a polyline; arcs get one segment per 30 degrees (at least 3)."""
    if stroke[0] != "arc":
        return stroke
    _, cx, cy, rx, ry, start, end = stroke
    steps = max(3, math.ceil(abs(end - start) / 30))
    angles = [math.radians(start + (end - start) * i / steps) for i in range(steps + 1)]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _glyph_table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All variants as segments, padded to one length, and where each class's variants sit.

    Returns segments (V, S, 4) as (x0, y0, x1, y1), lengths (V,) before padding,
    first_variant (10,) and variant_count (10,). Padding repeats a glyph's own segments.
    """
    variants, first, count = [], [], []
    for digit in range(10):
        first.append(len(variants))
        count.append(len(GLYPHS[digit]))
        for strokes in GLYPHS[digit]:
            segments = []
            for stroke in strokes:
                points = _stroke_points(stroke)
                segments += [(*a, *b) for a, b in zip(points, points[1:])]
            variants.append(segments)
    longest = max(len(s) for s in variants)
    padded = [(s * longest)[:longest] for s in variants]
    lengths = torch.tensor([len(s) for s in variants])
    return torch.tensor(padded), lengths, torch.tensor(first), torch.tensor(count)


GLYPH_SEGMENTS, GLYPH_LENGTHS, FIRST_VARIANT, VARIANT_COUNT = _glyph_table()


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, 1, generator=generator)


def _place_segments(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's glyph variant (N,) and its segments in pixel coordinates (N, S, 2, 2)."""
    n = len(labels)
    pick = (torch.rand(n, generator=generator) * VARIANT_COUNT[labels]).long()
    variant = FIRST_VARIANT[labels] + pick
    points = GLYPH_SEGMENTS[variant].view(n, -1, 2)  # (N, 2S, 2): both ends of every segment
    x, y = points[..., 0], points[..., 1]

    # Shape jitter: a smooth random warp (two sine waves per axis) moves nearby points together,
    # so strokes stay connected while loops, bowls and corners change shape.
    for coord, other in ((x, y), (y, x)):
        for along in (coord, other):
            amplitude = _uniform(generator, n, -0.04, 0.04)
            frequency = _uniform(generator, n, 2.0, 5.0)
            phase = _uniform(generator, n, 0.0, 2 * math.pi)
            coord += amplitude * torch.sin(frequency * along + phase)

    # Affine placement, written out elementwise (a matmul's rounding could depend on threads).
    angle = _uniform(generator, n, -0.3, 0.3)  # radians, about +-17 degrees
    scale = GLYPH_HEIGHT * _uniform(generator, n, 0.8, 1.1)  # pixels per unit
    aspect = _uniform(generator, n, 0.75, 1.25)  # width stretch
    shear = _uniform(generator, n, -0.25, 0.25)
    shift_x, shift_y = _uniform(generator, n, -3.0, 3.0), _uniform(generator, n, -3.0, 3.0)
    x = (x * aspect + shear * y) * scale
    y = y * scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    center = (SIDE - 1) / 2
    placed_x = center + shift_x + cos * x - sin * y
    placed_y = center + shift_y + sin * x + cos * y
    return variant, torch.stack([placed_x, placed_y], dim=-1).view(n, -1, 2, 2)


def _render(segments: torch.Tensor, half_width: torch.Tensor) -> torch.Tensor:
    """Ink (N, 784) in 0..1 from segments (N, S, 2, 2) and stroke half-widths (N, 1), in pixels.

    Ink falls from 1 to 0 over one pixel around the stroke's edge: a cheap antialiasing.
    """
    pixel = torch.arange(SIDE, dtype=torch.float32)
    pixel_x, pixel_y = pixel.repeat(SIDE), pixel.repeat_interleave(SIDE)  # (784,), row-major
    start, direction = segments[:, :, 0], segments[:, :, 1] - segments[:, :, 0]  # (N, S, 2)
    inverse_length2 = 1.0 / direction.square().sum(-1).clamp_min(1e-6)  # (N, S)
    nearest2 = torch.full((len(segments), SIDE * SIDE), float("inf"))
    for s in range(segments.shape[1]):
        ux, uy = direction[:, s, 0:1], direction[:, s, 1:2]  # (N, 1)
        dx = pixel_x - start[:, s, 0:1]  # (N, 784): from the segment start to each pixel
        dy = pixel_y - start[:, s, 1:2]
        t = (dx * ux + dy * uy).mul_(inverse_length2[:, s : s + 1]).clamp_(0.0, 1.0)
        dx.sub_(t * ux)
        dy.sub_(t * uy)
        torch.minimum(nearest2, dx.square_().add_(dy.square_()), out=nearest2)
    return (half_width + 0.5 - nearest2.sqrt_()).clamp_(0.0, 1.0)


@contextlib.contextmanager
def _one_thread():
    """Render on one thread: ~1 s for 25,000 images either way, but thread pools slow down
    10-25x on a machine whose cores are busy (other ranks, other jobs), and one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate_digits(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_samples` images uint8 (N, 1, 28, 28) and labels int64 (N,), balanced and shuffled."""
    with _one_thread():
        return _generate(num_samples, seed)


def _generate(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) % 10)[torch.randperm(num_samples, generator=generator)]
    variant, segments = _place_segments(labels, generator)
    half_width = _uniform(generator, num_samples, 0.9, 1.7)  # strokes 1.8 to 3.4 pixels wide
    ink = _uniform(generator, num_samples, 0.7, 1.0)
    noise_level = _uniform(generator, num_samples, 0.0, 0.1)
    noise = torch.randn(num_samples, SIDE * SIDE, generator=generator)
    images = torch.empty(num_samples, SIDE * SIDE, dtype=torch.uint8)
    # One variant at a time, so each renders only its own segments, not the padding.
    for v, length in enumerate(GLYPH_LENGTHS.tolist()):
        for rows in (variant == v).nonzero().squeeze(1).split(CHUNK):
            pixels = _render(segments[rows, :length], half_width[rows]).mul_(ink[rows])
            pixels.addcmul_(noise[rows], noise_level[rows]).clamp_(0.0, 1.0)
            images[rows] = pixels.mul_(255).round_().to(torch.uint8)
    return images.view(num_samples, 1, SIDE, SIDE), labels


def load_digits(
    cache_dir: Path, seed: int = 0, train_size: int = 20_000, test_size: int = 5_000
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels), from the cache or freshly drawn.

    Train and test come from different seeds (2 * seed and 2 * seed + 1, distinct for every seed).
    The cache only saves time: a corrupt file is redrawn and replaced, an unwritable folder ignored.
    """
    path = Path(cache_dir) / "digits" / f"digits-v{VERSION}-seed{seed}-{train_size}-{test_size}.pt"
    expected = {"train": train_size, "test": test_size}
    cached = _read_cache(path, expected)
    if cached is not None:
        return cached
    splits = {}
    for offset, (split, size) in enumerate(expected.items()):
        splits[f"{split}_images"], splits[f"{split}_labels"] = generate_digits(size, 2 * seed + offset)
    _write_cache(path, splits)
    return splits["train_images"], splits["train_labels"], splits["test_images"], splits["test_labels"]


def _read_cache(path: Path, expected: dict[str, int]) -> tuple[torch.Tensor, ...] | None:
    """The cached splits, or None when the file is missing, unreadable, or not what we expect."""
    try:
        splits = torch.load(path, weights_only=True)
        result = []
        for split, size in expected.items():
            images, labels = splits[f"{split}_images"], splits[f"{split}_labels"]
            if images.dtype != torch.uint8 or images.shape != (size, 1, SIDE, SIDE):
                return None
            if labels.dtype != torch.int64 or labels.shape != (size,):
                return None
            result += [images, labels]
        return tuple(result)
    except Exception:  # any damage at all (truncated, garbage, wrong keys) means: draw again
        return None


def _write_cache(path: Path, splits: dict[str, torch.Tensor]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            temporary = file.name
            torch.save(splits, file)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
