"""SynGym rendering: an articulated 3-D figure, the scene (apparatus, camera, noise) and a vectorised rasteriser.

Everything here is plain numpy and deterministic for given inputs.

Coordinates. The figure is built in *body units* (a standing figure measures about 1.2 units from sole to
crown) in a world frame with ``x`` to the image right, ``y`` up and ``z`` towards the camera, and is projected
orthographically onto ``(x, y)``; ``z`` only orders the drawing (far parts first) and darkens far limbs.
The canonical figure faces ``+x``. Its front is drawn in other colours than its back, wide enough to span
pixels at 64 px whatever the facing: the front half of the torso in the accent colour (the back half in the
leotard's), the face in skin under a hair cap on the back of the head, and a nose.

Poses are ``(T, 10)`` float arrays of joint angles in degrees, columns :data:`POSE_COLUMNS`:
shoulder flexion ``a`` (0 = arm down, 180 = overhead), elbow ``e``, hip flexion ``b`` (0 = straight,
90 = thigh forward), knee ``k`` (the shin bends backwards) and foot ``p`` (90 = flat foot, ~10 = pointed),
for the left (``_l``) and right (``_r``) side.

A motion is described by :class:`Track`: poses plus the per-frame salto angle (in-plane rotation, positive =
towards the front), twist (rotation about the body's long axis), and where the figure is anchored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSE_COLUMNS = ("a_l", "e_l", "a_r", "e_r", "b_l", "k_l", "p_l", "b_r", "k_r", "p_r")

# Body-part lengths in body units.
TORSO, HEAD_UP, UPPER_ARM, FOREARM, THIGH, SHIN, FOOT = 0.32, 0.13, 0.23, 0.21, 0.30, 0.28, 0.09
SHOULDER_W, HIP_W, NOSE_OUT = 0.08, 0.06, 0.09
TORSO_R, HEAD_R = 0.12, 0.10  # torso and head radii
# v3: the front half of the torso is a capsule of radius TORSO_R / 2 centred TORSO_R / 2 in front of the
# torso's axis, so it covers exactly the front half in profile; the hair cap sits on the back of the head.
CHEST_OUT, CHEST_LO, CHEST_HI = 0.5 * TORSO_R, 0.03, 0.29
HAIR_BACK, HAIR_UP, HAIR_R = 0.04, 0.015, 0.08

JOINTS = (
    "pelvis", "neck", "head", "nose", "hair", "chest_lo", "chest_hi",
    "shoulder_l", "elbow_l", "hand_l", "shoulder_r", "elbow_r", "hand_r",
    "hip_l", "knee_l", "ankle_l", "toe_l", "hip_r", "knee_r", "ankle_r", "toe_r",
)  # fmt: skip
J = {name: i for i, name in enumerate(JOINTS)}
FEET = [J["ankle_l"], J["toe_l"], J["ankle_r"], J["toe_r"]]

# Segments: (joint a, joint b, radius in body units, colour role, depth bias). Roles: 0 = leotard, 1 = accent
# (the front of the torso, the nose), 2 = skin, 3 = hair. The bias moves a part a little nearer in the drawing
# order, so that the front half of the torso and the hair cap show over the torso and the head in profile and
# disappear behind them once they turn away from the camera.
SEGMENTS = (
    (J["pelvis"], J["neck"], TORSO_R, 0, 0.0),
    (J["chest_lo"], J["chest_hi"], 0.5 * TORSO_R, 1, 0.01),
    (J["head"], J["head"], HEAD_R, 2, 0.0),
    (J["hair"], J["hair"], HAIR_R, 3, 0.01),
    (J["nose"], J["nose"], 0.045, 1, 0.03),
    (J["shoulder_l"], J["elbow_l"], 0.055, 2, 0.0),
    (J["elbow_l"], J["hand_l"], 0.05, 2, 0.0),
    (J["shoulder_r"], J["elbow_r"], 0.055, 2, 0.0),
    (J["elbow_r"], J["hand_r"], 0.05, 2, 0.0),
    (J["hip_l"], J["knee_l"], 0.07, 2, 0.0),
    (J["knee_l"], J["ankle_l"], 0.06, 2, 0.0),
    (J["ankle_l"], J["toe_l"], 0.045, 2, 0.0),
    (J["hip_r"], J["knee_r"], 0.07, 2, 0.0),
    (J["knee_r"], J["ankle_r"], 0.06, 2, 0.0),
    (J["ankle_r"], J["toe_r"], 0.045, 2, 0.0),
)
SEG_A = np.array([s[0] for s in SEGMENTS])
SEG_B = np.array([s[1] for s in SEGMENTS])
SEG_RADIUS = np.array([s[2] for s in SEGMENTS], dtype=np.float32)
SEG_ROLE = np.array([s[3] for s in SEGMENTS])
SEG_DEPTH_BIAS = np.array([s[4] for s in SEGMENTS], dtype=np.float32)


def pose(a: float, e: float, b: float, k: float, p: float, *,
         free: tuple[float, float, float] | None = None) -> np.ndarray:
    """A symmetric pose (both arms ``a, e``; both legs ``b, k, p``) as a ``(10,)`` array.

    ``free = (b, k, p)`` overrides the *left* leg (the free leg of one-leg turns; the right leg supports).
    """
    left_leg = free if free is not None else (b, k, p)
    return np.array([a, e, a, e, *left_leg, b, k, p], dtype=np.float64)


@dataclass(frozen=True)
class Track:
    """A motion sampled at ``T`` frames, in body units and degrees, before placement in the image.

    ``poses``: ``(T, 10)`` joint angles; ``salto``: ``(T,)`` in-plane rotation (positive = towards the front);
    ``twist``: ``(T,)`` rotation about the body's long axis; ``anchor``: ``"ground"`` (lowest foot on the
    ground line, ``root_x`` is the pelvis x), ``"pivot"`` (right ankle at ``root_x`` on the ground: one-leg
    turns) or ``"hands"`` (hands at the bar, ``root_x`` ignored); ``root_x``: ``(T,)`` horizontal travel;
    ``lift``: ``(T,)`` extra height above the ground (flight).
    """

    poses: np.ndarray
    salto: np.ndarray
    twist: np.ndarray
    anchor: str
    root_x: np.ndarray
    lift: np.ndarray


def _unit(angle_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Limb direction at ``angle`` from straight down towards the front: ``(up, front)`` components."""
    rad = np.deg2rad(angle_deg)
    return -np.cos(rad), np.sin(rad)


def body_joints(poses: np.ndarray) -> np.ndarray:
    """Joint positions in the body frame, ``(T, J, 3)`` as ``(front, up, lateral)``; pelvis at the origin."""
    t = poses.shape[0]
    out = np.zeros((t, len(JOINTS), 3))
    out[:, J["neck"], 1] = TORSO
    out[:, J["head"], 1] = TORSO + HEAD_UP
    out[:, J["nose"]] = (NOSE_OUT, TORSO + HEAD_UP, 0.0)
    out[:, J["hair"]] = (-HAIR_BACK, TORSO + HEAD_UP + HAIR_UP, 0.0)
    out[:, J["chest_lo"]] = (CHEST_OUT, CHEST_LO, 0.0)
    out[:, J["chest_hi"]] = (CHEST_OUT, CHEST_HI, 0.0)
    for side, sign, col in (("l", 1.0, 0), ("r", -1.0, 2)):
        a, e = poses[:, col], poses[:, col + 1]
        shoulder = np.array([0.0, TORSO - 0.03, sign * SHOULDER_W])
        _chain(out, shoulder, [(f"shoulder_{side}", None), (f"elbow_{side}", (a, UPPER_ARM)),
                               (f"hand_{side}", (a + e, FOREARM))])
    for side, sign, col in (("l", 1.0, 4), ("r", -1.0, 7)):
        b, k, p = poses[:, col], poses[:, col + 1], poses[:, col + 2]
        hip = np.array([0.0, 0.0, sign * HIP_W])
        _chain(out, hip, [(f"hip_{side}", None), (f"knee_{side}", (b, THIGH)), (f"ankle_{side}", (b - k, SHIN)),
                          (f"toe_{side}", (b - k + p, FOOT))])
    return out


def _chain(out: np.ndarray, origin: np.ndarray, links: list) -> None:
    """Fill a kinematic chain in ``out`` (T, J, 3): each link is ``(joint, (angle, length) | None)``."""
    pos = np.broadcast_to(origin, (out.shape[0], 3)).copy()
    for name, link in links:
        if link is not None:
            up, front = _unit(link[0])
            pos = pos + np.stack([front * link[1], up * link[1], np.zeros_like(up)], axis=-1)
        out[:, J[name]] = pos


def world_joints(track: Track) -> np.ndarray:
    """Rotate body-frame joints by twist (about the long axis) then salto (in-plane), ``(T, J, 3)`` as (x, y, z).

    The rotation centre is the pelvis; placement in the image is done by :func:`place`.
    """
    body = body_joints(track.poses)  # (T, J, 3) = (front, up, lateral)
    tw = np.deg2rad(track.twist)[:, None]
    front = body[..., 0] * np.cos(tw) - body[..., 2] * np.sin(tw)
    lateral = body[..., 0] * np.sin(tw) + body[..., 2] * np.cos(tw)
    up = body[..., 1]
    sa = np.deg2rad(track.salto)[:, None]  # positive = clockwise = head towards +x (the front)
    x = front * np.cos(sa) + up * np.sin(sa)
    y = -front * np.sin(sa) + up * np.cos(sa)
    return np.stack([x, y, lateral], axis=-1)


def place(track: Track, joints: np.ndarray) -> np.ndarray:
    """World joints ``(T, J, 3)`` translated so the figure stands, pivots or hangs as ``track.anchor`` says.

    The result is in body units relative to the scene anchor: ``y = 0`` is the ground line (or the bar for
    ``"hands"``), ``x = 0`` the figure's start position (or the bar).
    """
    out = joints.copy()
    if track.anchor == "hands":
        hands = 0.5 * (joints[:, J["hand_l"], :2] + joints[:, J["hand_r"], :2])  # (T, 2)
        out[..., :2] -= hands[:, None, :]
        return out
    if track.anchor == "pivot":
        out[..., 0] += (track.root_x - joints[:, J["ankle_r"], 0])[:, None]
        lowest = joints[:, [J["ankle_r"], J["toe_r"]], 1].min(axis=1)
    elif track.anchor == "ground":
        out[..., 0] += track.root_x[:, None]
        lowest = joints[:, FEET, 1].min(axis=1)
    else:
        raise ValueError(f"unknown anchor {track.anchor!r}")
    # Feet on the ground while in contact (lift == 0); in flight the pelvis follows the line between the
    # take-off and landing heights plus the lift, and no body part may go below the ground.
    frames = np.arange(len(joints))
    contact = track.lift <= 0
    base = np.interp(frames, frames[contact], -lowest[contact]) if contact.any() else np.zeros(len(joints))
    above = -(joints[..., 1].min(axis=1) - 0.09)
    out[..., 1] += np.maximum(np.where(contact, -lowest, base + track.lift), above)[:, None]
    return out


@dataclass(frozen=True)
class Look:
    """How the figure is drawn: colours as ``(3,)`` float RGB in 0..255, ``scale`` in pixels per body unit."""

    leotard: np.ndarray
    accent: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    scale: float


def segments_2d(placed: np.ndarray, look: Look, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """Project placed joints to pixels: returns ``(p0, p1)`` ``(T, S, 2)`` as (col, row), ``radius`` ``(S,)``,
    ``colour`` ``(T, S, 3)`` and ``depth`` ``(T, S)``.

    ``origin`` ``(T, 2)`` is the pixel (col, row) of the scene anchor in each frame (camera jitter included).
    """
    px = origin[:, None, 0] + look.scale * placed[..., 0]  # (T, J)
    py = origin[:, None, 1] - look.scale * placed[..., 1]
    pts = np.stack([px, py], axis=-1)
    p0, p1 = pts[:, SEG_A], pts[:, SEG_B]  # (T, S, 2)
    depth = 0.5 * (placed[:, SEG_A, 2] + placed[:, SEG_B, 2]) + SEG_DEPTH_BIAS  # (T, S)
    base = np.stack([look.leotard, look.accent, look.skin, look.hair])[SEG_ROLE]  # (S, 3)
    shade = np.clip(0.82 + 1.2 * depth, 0.55, 1.0)[..., None]  # far limbs darker
    shade = np.where((SEG_ROLE == 1)[None, :, None], 1.0, shade)
    colour = base[None] * shade
    return p0.astype(np.float32), p1.astype(np.float32), SEG_RADIUS * look.scale, colour.astype(np.float32), depth


def rasterise(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, colour: np.ndarray,
              depth: np.ndarray) -> None:
    """Draw anti-aliased capsules far-to-near into the planar ``canvas`` ``(3, T, H, W)`` float32, in place.

    ``p0, p1`` ``(T, S, 2)`` are the capsules' end points as (col, row) px, ``radius`` ``(S,)`` px,
    ``colour`` ``(T, S, 3)``, ``depth`` ``(T, S)`` (larger = nearer). Each capsule is evaluated in a square
    window around it whose size depends only on the longest capsule, so the cost does not grow with the image.
    Windows are clamped into the image (and to its size), which keeps every visible pixel of a capsule inside.
    """
    if not canvas.flags.c_contiguous:
        raise ValueError("rasterise draws in place and needs a C-contiguous canvas")
    _, t, h, w = canvas.shape
    size = int(np.ceil((np.linalg.norm(p1 - p0, axis=-1).max(axis=0) + 2 * radius).max() + 3))
    size_x, size_y = min(size, w), min(size, h)  # a window as large as the image covers all of it
    radius = radius.astype(np.float32)
    lo = np.minimum(p0, p1) - radius[None, :, None] - 1.0  # (T, S, 2)
    x0 = np.clip(np.floor(lo[..., 0]).astype(np.int64), 0, w - size_x)  # (T, S)
    y0 = np.clip(np.floor(lo[..., 1]).astype(np.int64), 0, h - size_y)
    cols = x0[..., None, None] + np.arange(size_x)[None, None, None, :]  # (T, S, 1, sx)
    rows = y0[..., None, None] + np.arange(size_y)[None, None, :, None]  # (T, S, sy, 1)
    px = (cols + 0.5 - p0[..., 0, None, None]).astype(np.float32)  # (T, S, 1, sx) pixel centre - p0
    py = (rows + 0.5 - p0[..., 1, None, None]).astype(np.float32)  # (T, S, sy, 1)
    ab = (p1 - p0)[..., None, None, :]  # (T, S, 1, 1, 2)
    denom = np.maximum((ab**2).sum(-1), np.float32(1e-6))
    u = np.clip((px * ab[..., 0] + py * ab[..., 1]) / denom, 0.0, 1.0)  # (T, S, sy, sx)
    dist = np.hypot(px - u * ab[..., 0], py - u * ab[..., 1])
    cover = np.clip(radius[None, :, None, None] + np.float32(0.5) - dist, 0.0, 1.0)  # (T, S, sy, sx)
    pixel = (np.arange(t)[:, None, None, None] * h + rows) * w + cols  # (T, S, sy, sx) into (T, H, W)
    order = np.argsort(depth, axis=1, kind="stable")  # (T, S), far first
    frames = np.arange(t)[:, None]
    pixel = np.ascontiguousarray(pixel[frames, order].transpose(1, 0, 2, 3))  # (S, T, sy, sx): rank first
    cover = np.ascontiguousarray(cover[frames, order].transpose(1, 0, 2, 3))
    colour = colour[frames, order].transpose(2, 1, 0)  # (3, S, T)
    for c in range(3):  # one channel plane at a time: 1-D gathers and scatters are the fastest
        plane = canvas[c].reshape(-1)  # (T*H*W,) view (the canvas is contiguous)
        for rank in range(pixel.shape[0]):
            idx = pixel[rank]
            under = plane[idx]
            plane[idx] = under + cover[rank] * (colour[c, rank][:, None, None] - under)


# --------------------------------------------------------------------------------------------- backgrounds

def upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of ``grid`` ``(gh, gw, C)`` to ``(h, w, C)`` (corners aligned)."""
    gh, gw = grid.shape[:2]
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.minimum(ys.astype(int), gh - 2), np.minimum(xs.astype(int), gw - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def arena(rng: np.random.Generator, h: int, w: int, ground_row: float) -> np.ndarray:
    """A textured arena ``(h, w, 3)`` float32: blotchy stands with rows of crowd above, a floor below ``ground_row``."""
    base = rng.uniform(20, 110, 3)
    image = base + upsample(rng.normal(0, 14, (5, 6, 3)), h, w)
    crowd = upsample(rng.normal(0, 1, (h // 2 + 2, w // 2 + 2, 3)), h, w)
    image += 7 * crowd * (np.arange(h) < ground_row)[:, None, None]
    for _ in range(rng.integers(1, 4)):  # banners / advertising boards
        row = rng.uniform(0.1, 0.9) * ground_row
        image[int(row) : int(row + rng.uniform(1, 4))] += rng.uniform(-35, 35, 3)
    floor = rng.uniform(40, 160, 3) + upsample(rng.normal(0, 8, (3, 4, 3)), h, w)
    rows = np.arange(h)[:, None, None]
    image = np.where(rows >= ground_row, floor, image)
    return image.astype(np.float32)


def fill_rect(image: np.ndarray, top: float, bottom: float, left: float, right: float, colour: np.ndarray) -> None:
    """Fill ``[top, bottom) x [left, right)`` (pixels, clipped) with ``colour``, anti-aliased vertically."""
    h, w = image.shape[:2]
    l, r = max(int(round(left)), 0), min(int(round(right)), w)
    for row in range(max(int(np.floor(top)), 0), min(int(np.ceil(bottom)), h)):
        cover = min(row + 1, bottom) - max(row, top)
        image[row, l:r] += np.float32(cover) * (colour - image[row, l:r])


def fill_disc(image: np.ndarray, row: float, col: float, radius: float, colour: np.ndarray) -> None:
    """Draw an anti-aliased disc of ``radius`` px centred at (``row``, ``col``) on ``image`` ``(h, w, 3)``."""
    h, w = image.shape[:2]
    dist = np.hypot(np.arange(h)[:, None] + 0.5 - row, np.arange(w)[None, :] + 0.5 - col)
    cover = np.clip(radius - dist + 0.5, 0, 1)[..., None].astype(np.float32)
    image += cover * (colour - image)


# ------------------------------------------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Scene:
    """Everything about a clip that is not the element: apparatus, placement, look, camera and noise.

    Pixel quantities refer to a ``frame_size`` x ``frame_size`` image. ``ground_row`` is the row of the floor
    (FX), the beam's top (BB) or the high bar (UB); ``centre_col`` the column around which the figure performs
    (the bar's column for UB); ``scale`` the pixels per body unit. Colours are RGB in 0..255.
    ``camera_amplitude`` (px) bounds the integer camera shake; ``noise_sigma`` is the std of the pixel noise.
    """

    event: str
    frame_size: int
    scale: float
    ground_row: float
    centre_col: float
    leotard: tuple[float, float, float]
    accent: tuple[float, float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background_seed: int
    low_bar_side: int
    camera_amplitude: float
    camera_seed: int
    noise_sigma: float
    noise_seed: int

    @property
    def look(self) -> Look:
        return Look(np.array(self.leotard), np.array(self.accent), np.array(self.skin), np.array(self.hair),
                    self.scale)


def background(scene: Scene, pad: int) -> np.ndarray:
    """The static background with its apparatus, ``(S + 2 pad, S + 2 pad, 3)`` float32 (``pad`` px all round)."""
    size, k = scene.frame_size + 2 * pad, scene.scale
    row, col = scene.ground_row + pad, scene.centre_col + pad
    rng = np.random.default_rng(scene.background_seed)
    floor_row = {"FX": row, "BB": row + 1.0 * k, "UB": row + 1.75 * k}[scene.event]
    image = arena(rng, size, size, floor_row)
    wood, metal = rng.uniform(150, 230, 3).astype(np.float32), rng.uniform(170, 240, 3).astype(np.float32)
    if scene.event == "BB":
        for post in (0.15, 0.85):
            fill_rect(image, row, floor_row, post * size - 0.05 * k, post * size + 0.05 * k, 0.6 * wood)
        fill_rect(image, row, row + 0.14 * k, 0, size, wood)
    elif scene.event == "UB":
        side = scene.low_bar_side
        low_row, low_col = row + 0.8 * k, col + side * 1.0 * k
        for bar_row, bar_col in ((row, col), (low_row, low_col)):
            fill_rect(image, bar_row, floor_row, bar_col - 0.03 * k, bar_col + 0.03 * k, 0.55 * metal)
            fill_disc(image, bar_row, bar_col, max(0.05 * k, 1.2), metal)
    return image


def camera_offsets(scene: Scene, num_frames: int) -> np.ndarray:
    """Integer camera shake ``(T, 2)`` as (dx, dy) px: two random sinusoids per axis, ``|offset| <= amplitude``."""
    rng = np.random.default_rng(scene.camera_seed)
    freq = rng.uniform(0.02, 0.1, (2, 2))  # (axis, component) cycles per frame
    phase = rng.uniform(0, 2 * np.pi, (2, 2))
    t = np.arange(num_frames)[:, None, None]
    wave = np.sin(2 * np.pi * freq[None] * t + phase[None]).sum(-1) / 2  # (T, 2) in [-1, 1]
    return np.rint(scene.camera_amplitude * wave).astype(np.int64)


def render_frames(scene: Scene, placed: np.ndarray) -> np.ndarray:
    """Draw the placed figure over the scene: ``(T, S, S, 3)`` uint8 RGB.

    ``placed`` is ``(T, J, 3)`` in body units relative to the scene anchor (see :func:`place`): ``x = 0`` at
    ``centre_col``, ``y = 0`` at ``ground_row``.
    """
    t, size = placed.shape[0], scene.frame_size
    jitter = int(np.ceil(scene.camera_amplitude))
    bg = np.ascontiguousarray(background(scene, jitter).transpose(2, 0, 1))  # (3, S + 2j, S + 2j)
    shake = camera_offsets(scene, t)  # (T, 2) as (dx, dy)
    views = np.lib.stride_tricks.sliding_window_view(bg, (size, size), axis=(1, 2))  # (3, 2j+1, 2j+1, S, S)
    canvas = np.ascontiguousarray(views[:, jitter + shake[:, 1], jitter + shake[:, 0]])  # (3, T, S, S)
    origin = np.array([scene.centre_col, scene.ground_row])[None, :] - shake  # (T, 2) as (col, row)
    rasterise(canvas, *segments_2d(placed, scene.look, origin))
    canvas += uniform_noise(np.random.default_rng(scene.noise_seed), (t, size, size), scene.noise_sigma)  # luma noise
    canvas += 0.5  # round to nearest on the cast below
    frames = np.clip(canvas, 0.0, 255.0, out=canvas).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(1, 2, 3, 0))  # (T, S, S, 3)


def uniform_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean uniform noise of standard deviation ``sigma`` (cheap: one random byte per value), float32."""
    raw = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape)
    return (raw.astype(np.float32) - 127.5) * np.float32(sigma * np.sqrt(3.0) / 127.5)
