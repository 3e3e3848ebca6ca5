"""Street scenes in miniature: a testbed where context predicts what a hidden patch holds.

MaskMatch's masked view asks the student to predict the teacher's full-image pseudo-labels from
30 % of the patches; that can only be learned where the surroundings say what a hidden patch
holds. The digit, letter and face canvases are items on a texture with no layout; these scenes
have one, as street scenes do:

- **stuff** by a layout: sky above a horizon, a row of buildings (brick-textured facades with
  window grids, gaps of sky between them) standing on it, below it a road whose edges run to a
  vanishing point, sidewalks beside the road, and trees (trunk and canopy: ``vegetation``) on the
  sidewalks in front of the buildings;
- **things** by where they stand, drawn far to near so that nearer ones occlude farther ones:
  cars on the road, people on the sidewalks, poles at the kerb with a sign on top, each scaled by
  its distance below the horizon (perspective), so that far ones are a few pixels;
- **variation**: horizon height, vanishing point, facades of any tint and texture, road and
  sidewalk tones that overlap (either may be the lighter; kerbs and the layout tell them apart),
  hedges, foliage from summer to autumn, skies (day, overcast, dusk) with clouds, global lighting,
  colour cast and contrast, a shadow ramp across the image, blur and noise.

Images are ``64 x 128`` (height x width); labels have no ignore rims (every pixel is a class, as
in Cityscapes' fine labels), so boundaries and small things can be scored
(:mod:`maskmatch_pl.locality`). The textures are scikit-image's bundled photos (the ``testbeds``
extra); nothing is downloaded. Written in the UniMatch layout by
:func:`maskmatch_pl.data.testbeds.build_testbed` (``dataset: scenes``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENE_CLASSES = ["road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole", "sign"]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE, SIGN = range(len(SCENE_CLASSES))
SCENE_PALETTE = [  # Cityscapes' colours for the same classes
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
    (220, 220, 0),
]
SCENE_HEIGHT, SCENE_WIDTH = 64, 128
SCENES_VERSION = "v2"  # bump when the pixels change
SKIES = (  # (top, bottom) colours in [0, 1]: day, overcast, dusk
    ((0.35, 0.55, 0.85), (0.75, 0.85, 0.95)),
    ((0.6, 0.62, 0.66), (0.82, 0.83, 0.85)),
    ((0.3, 0.3, 0.55), (0.95, 0.6, 0.35)),
)


class _Canvas:
    """An image and its label map painted together, shape by shape (painter's algorithm)."""

    def __init__(self, height: int, width: int, textures: list[np.ndarray], rng: np.random.Generator) -> None:
        self.height, self.width, self.textures, self.rng = height, width, textures, rng
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label = np.zeros((height, width), dtype=np.uint8)

    def region(self, draw: str, *args: object, **kwargs: object) -> np.ndarray:
        """A boolean ``H x W`` region from one PIL ``ImageDraw`` call (``polygon``, ``ellipse``,
        ``rectangle``, ...), hard-edged."""
        shape = Image.new("L", (self.width, self.height), 0)
        getattr(ImageDraw.Draw(shape), draw)(*args, fill=255, **kwargs)
        return np.asarray(shape) > 127

    def texture(self, index: int, scale: float) -> np.ndarray:
        """An ``H x W`` grey crop of texture ``index`` at ``scale`` (texture px per image px), in [0, 1]."""
        source = self.textures[index]
        side_h = min(source.shape[0], max(4, int(self.height * scale)))
        side_w = min(source.shape[1], max(4, int(self.width * scale)))
        top = int(self.rng.integers(0, source.shape[0] - side_h + 1))
        left = int(self.rng.integers(0, source.shape[1] - side_w + 1))
        crop = Image.fromarray((source[top : top + side_h, left : left + side_w] * 255).astype(np.uint8))
        return np.asarray(crop.resize((self.width, self.height), Image.BILINEAR), dtype=np.float32) / 255.0

    def paint(
        self, region: np.ndarray, colour: np.ndarray, label: int, texture: np.ndarray | None = None, amount: float = 0.5
    ) -> None:
        """Paint ``colour`` (RGB in [0, 1]), modulated by ``texture`` by ``amount``, and ``label`` into ``region``."""
        fill = np.broadcast_to(np.asarray(colour, dtype=np.float32), self.image.shape)
        if texture is not None:
            fill = fill * (1 - amount + 2 * amount * texture[..., None])
        self.image[region] = fill[region]
        self.label[region] = label


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], spread: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(colour) + rng.uniform(-spread, spread, 3), 0, 1)


def _tint(rng: np.random.Generator, grey: float, spread: float) -> np.ndarray:
    """A colour near ``grey`` with a random tint of up to ``spread`` per channel, in [0, 1]."""
    return np.clip(grey + rng.uniform(-spread, spread, 3), 0, 1)


def _foliage(rng: np.random.Generator) -> np.ndarray:
    """Leaves from summer green to autumn brown."""
    autumn = rng.random() ** 2
    return _jitter(rng, (0.25 + 0.4 * autumn, 0.45 - 0.05 * autumn, 0.15), 0.08)


def render_scene(
    textures: list[np.ndarray], rng: np.random.Generator, height: int = SCENE_HEIGHT, width: int = SCENE_WIDTH
) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: ``uint8 [height, width, 3]`` image and ``uint8 [height, width]`` labels
    (indices into :data:`SCENE_CLASSES`, no ignore). ``textures``: grey ``float32`` photos in [0, 1]
    (brick, grass, gravel: :func:`maskmatch_pl.data.testbeds.load_textures`)."""
    brick, grass, gravel = range(3)
    canvas = _Canvas(height, width, textures, rng)
    horizon = int(height * rng.uniform(0.38, 0.55))

    # sky: a vertical gradient between two colours of one of the skies
    top, bottom = (np.asarray(c) for c in SKIES[rng.integers(len(SKIES))])
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None] * np.ones((1, width, 1), dtype=np.float32)
    canvas.image[:] = top + (bottom - top) * ramp + rng.uniform(-0.05, 0.05, 3)
    canvas.label[:] = SKY
    for _ in range(int(rng.integers(0, 4))):  # clouds: sky too
        cx, cy, rx = rng.uniform(0, width), rng.uniform(0, horizon), rng.uniform(5, 20)
        cloud = canvas.region("ellipse", [cx - rx, cy - rx * 0.35, cx + rx, cy + rx * 0.35])
        canvas.paint(cloud, _tint(rng, rng.uniform(0.7, 0.95), 0.04), SKY)

    # buildings along the horizon, with gaps of sky
    x = -int(rng.integers(0, width // 8))
    while x < width:
        side = int(rng.integers(width // 10, width // 3))
        if rng.random() < 0.15:
            x += side // 2
            continue
        roof = horizon - int(rng.integers(int(height * 0.12), int(height * 0.42)))
        facade = canvas.region("rectangle", [x, roof, x + side - 1, horizon + 1])
        colour = _tint(rng, rng.uniform(0.3, 0.75), 0.5)  # any tint: plaster, brick, concrete, glass
        texture = brick if rng.random() < 0.6 else int(rng.integers(3))
        canvas.paint(facade, colour, BUILDING, canvas.texture(texture, rng.uniform(0.8, 2.0)), rng.uniform(0.2, 0.5))
        pitch_x, pitch_y = int(rng.integers(4, 8)), int(rng.integers(4, 8))
        window_colour = _jitter(rng, (0.15, 0.2, 0.3) if rng.random() < 0.7 else (0.9, 0.85, 0.5), 0.08)
        for wy in range(roof + 2, horizon - 2, pitch_y):
            for wx in range(x + 2, x + side - 3, pitch_x):
                canvas.paint(canvas.region("rectangle", [wx, wy, wx + 1, wy + 1]), window_colour, BUILDING)
        x += side

    # ground: sidewalk everywhere below the horizon, then the road to a vanishing point
    ground = np.zeros((height, width), dtype=bool)
    ground[horizon:] = True
    # road and sidewalk tones overlap (either may be the lighter): the kerb and the layout tell them apart
    canvas.paint(ground, _tint(rng, rng.uniform(0.35, 0.7), 0.15), SIDEWALK, canvas.texture(gravel, 1.0), 0.3)
    vanish = width * rng.uniform(0.3, 0.7)
    left_foot, right_foot = vanish - width * rng.uniform(0.35, 0.8), vanish + width * rng.uniform(0.35, 0.8)

    def road_span(y: float) -> tuple[float, float]:
        t = (y - horizon) / max(height - horizon, 1)
        return vanish + (left_foot - vanish) * t, vanish + (right_foot - vanish) * t

    road = canvas.region(
        "polygon", [(vanish - 1, horizon), (vanish + 1, horizon), (right_foot, height), (left_foot, height)]
    )
    canvas.paint(
        road, _tint(rng, rng.uniform(0.22, 0.55), 0.1), ROAD, canvas.texture(gravel, rng.uniform(0.4, 1.6)), 0.3
    )
    if rng.random() < 0.7:  # kerbs: a line along each road edge, part of the sidewalk
        kerb = _tint(rng, rng.uniform(0.5, 0.9), 0.05)
        for foot in (left_foot, right_foot):
            edge = canvas.region("line", [(vanish, horizon), (foot, height)], width=1)
            canvas.paint(edge & ~road, kerb, SIDEWALK)
    if rng.random() < 0.4:  # a hedge along the back of the sidewalk, in front of the buildings
        top = horizon - int(rng.integers(1, 4))
        hedge = canvas.region("rectangle", [0, top, width, horizon + int(rng.integers(0, 3))]) & ~road
        canvas.paint(hedge, _foliage(rng), VEGETATION, canvas.texture(grass, 1.0), 0.5)
    for y in range(horizon + 3, height, 6):  # dashed centre line: road, painted white
        depth = (y - horizon) / (height - horizon)
        centre = vanish + ((left_foot + right_foot) / 2 - vanish) * depth
        dash = canvas.region("rectangle", [centre - depth, y, centre + depth, y + 1 + 2 * depth])
        canvas.paint(dash & road, np.array([0.85, 0.85, 0.8]), ROAD)

    # things, far to near: cars on the road, people and trees on the sidewalks, poles at the kerb
    things: list[tuple[float, str, float]] = []
    for _ in range(int(rng.integers(0, 5))):
        y = rng.uniform(horizon + 3, height + 4)
        low, high = road_span(min(y, height))
        things.append((y, "car", rng.uniform(low + 2, high - 2)))
    for kind, count in (("person", int(rng.integers(0, 5))), ("tree", int(rng.integers(0, 3)))):
        for _ in range(count):
            y = rng.uniform(horizon + 2, height + 2)
            low, high = road_span(min(y, height))
            sides = [(0.0, low - 2), (high + 2, float(width))]
            sides = [(a, b) for a, b in sides if b - a > 3]
            if sides:
                a, b = sides[int(rng.integers(len(sides)))]
                things.append((y, kind, rng.uniform(a, b)))
    for _ in range(int(rng.integers(0, 4))):
        y = rng.uniform(horizon + 4, height)
        low, high = road_span(y)
        things.append((y, "pole", low - 2 if rng.random() < 0.5 else high + 2))
    for y, kind, x in sorted(things):
        depth = (y - horizon) / (height - horizon)  # 0 at the horizon, 1 at the bottom edge
        if kind == "car":
            car_w = depth * width * rng.uniform(0.22, 0.34) + 3
            car_h = car_w * rng.uniform(0.4, 0.5)
            colour = rng.uniform(0.05, 0.95, 3)
            body = canvas.region("rectangle", [x - car_w / 2, y - car_h * 0.6, x + car_w / 2, y - car_h * 0.1])
            cabin = canvas.region(
                "polygon",
                [
                    (x - car_w * 0.38, y - car_h * 0.6),
                    (x - car_w * 0.25, y - car_h),
                    (x + car_w * 0.25, y - car_h),
                    (x + car_w * 0.38, y - car_h * 0.6),
                ],
            )
            canvas.paint(body | cabin, colour, CAR)
            glass = canvas.region("rectangle", [x - car_w * 0.22, y - car_h * 0.93, x + car_w * 0.22, y - car_h * 0.65])
            canvas.paint(glass & cabin, _jitter(rng, (0.2, 0.25, 0.3)), CAR)
            radius = max(car_h * 0.17, 0.6)
            for wheel_x in (x - car_w * 0.3, x + car_w * 0.3):
                wheel = canvas.region(
                    "ellipse", [wheel_x - radius, y - car_h * 0.1 - radius, wheel_x + radius, y - car_h * 0.1 + radius]
                )
                canvas.paint(wheel, np.array([0.05, 0.05, 0.05]), CAR)
        elif kind == "person":
            tall = depth * height * rng.uniform(0.3, 0.45) + 3
            half = max(tall * 0.13, 0.6)
            head = canvas.region("ellipse", [x - half, y - tall, x + half, y - tall + 2 * half])
            torso = canvas.region("rectangle", [x - half * 1.2, y - tall + 2 * half, x + half * 1.2, y - tall * 0.45])
            legs = canvas.region("rectangle", [x - half, y - tall * 0.45, x + half, y])
            canvas.paint(head, _jitter(rng, (0.8, 0.6, 0.5), 0.15), PERSON)
            canvas.paint(torso, rng.uniform(0.05, 0.95, 3), PERSON)
            canvas.paint(legs, rng.uniform(0.05, 0.5, 3), PERSON)
        elif kind == "tree":
            tall = depth * height * rng.uniform(0.5, 0.8) + 6
            half = max(depth * 1.5, 0.5)
            trunk = canvas.region("rectangle", [x - half, y - tall * 0.5, x + half, y])
            canopy_r = tall * rng.uniform(0.25, 0.35)
            canopy = canvas.region(
                "ellipse", [x - canopy_r, y - tall, x + canopy_r, y - tall + 2 * canopy_r * rng.uniform(0.8, 1.1)]
            )
            canvas.paint(trunk, _jitter(rng, (0.35, 0.25, 0.15)), VEGETATION)
            canvas.paint(canopy, _foliage(rng), VEGETATION, canvas.texture(grass, 1.0), 0.5)
        else:  # a pole with a sign on top
            tall = depth * height * rng.uniform(0.7, 1.0) + 8
            half = max(depth * 0.9, 0.5)
            canvas.paint(
                canvas.region("rectangle", [x - half, y - tall, x + half, y]), _jitter(rng, (0.5, 0.5, 0.5)), POLE
            )
            size = depth * rng.uniform(3, 6) + 2
            centre_y = y - tall
            shape = rng.integers(3)
            box = [x - size / 2, centre_y - size / 2, x + size / 2, centre_y + size / 2]
            if shape == 0:
                sign = canvas.region("rectangle", box)
            elif shape == 1:
                sign = canvas.region("ellipse", box)
            else:
                sign = canvas.region("polygon", [(x, box[1]), (box[2], box[3]), (box[0], box[3])])
            colours = ((0.85, 0.1, 0.1), (0.1, 0.3, 0.85), (0.95, 0.85, 0.1), (0.95, 0.95, 0.95))
            canvas.paint(sign, _jitter(rng, colours[rng.integers(len(colours))], 0.05), SIGN)

    # lighting: brightness, colour cast, a shadow ramp across the image; then blur and sensor noise
    image = canvas.image * rng.uniform(0.55, 1.2) * rng.uniform(0.8, 1.2, 3)
    image = (image - image.mean()) * rng.uniform(0.7, 1.3) + image.mean()  # contrast
    ramp_x = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0), width, dtype=np.float32)
    image = image * ramp_x[None, :, None]
    pixels = Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8))
    if rng.random() < 0.5:
        pixels = pixels.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.7))))
    image = np.asarray(pixels, dtype=np.float32) / 255.0 + rng.normal(0, 0.02, (height, width, 3))
    return (image.clip(0, 1) * 255).astype(np.uint8), canvas.label
