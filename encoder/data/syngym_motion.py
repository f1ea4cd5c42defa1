"""SynGym choreography: the motion of each kind of element as a :class:`~encoder.data.syngym_render.Track`.

Every builder takes the element phase ``s`` (``(T,)`` floats in ``[0, 1]``; lead-in frames hold 0 and lead-out
frames hold 1) and returns the canonical motion: facing ``+x`` and rotating *forward* (towards the front).
Backward elements are not built here: a backward clip is the exact time reverse of a forward clip, which is
what makes a single frame carry no information about the direction (see ``docs/syngym.md``).

Motions are time-symmetric in shape (stand - shape - stand), so their reverse is a plausible element too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoder.data.syngym_render import J, Track, place, pose, world_joints

# Poses, (shoulder, elbow, hip, knee, foot) in degrees; see ``syngym_render.POSE_COLUMNS``.
STAND = pose(170, 0, 0, 0, 85)  # arms up, feet flat
STAND_REST = pose(15, 10, 0, 0, 85)  # arms down (between elements)
CROUCH = pose(60, 20, 70, 110, 70)
SALTO_SHAPES = {
    "stretched": pose(20, 0, 0, 0, 15),
    "piked": pose(105, 0, 125, 0, 15),
    "tucked": pose(55, 95, 130, 145, 15),
}
TURN_SHAPES = {  # the right leg supports; ``free`` is the left leg
    "heel_forward": pose(170, 0, 0, 0, 20, free=(90, 0, 20)),
    "free_leg_low": pose(80, 50, 0, 0, 20, free=(55, 110, 20)),
    "tuck_stand": pose(80, 50, 115, 140, 80, free=(85, 0, 20)),
}
HANDSTAND = pose(180, 0, 0, 0, 15)
CIRCLE_SHAPES = {
    "giant": pose(180, 0, -12, 0, 15),
    "clear_hip": pose(35, 0, 40, 0, 15),
    "pike_sole": pose(175, 0, 160, 0, 15),
}


def smoothstep(x: np.ndarray) -> np.ndarray:
    """``3x^2 - 2x^3`` of ``x`` clipped to ``[0, 1]``."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ease(q: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """Monotone ``[0, 1] -> [0, 1]`` map whose speed peaks mid-way (``1 +- strength``)."""
    q = np.clip(q, 0.0, 1.0)
    return q - strength * np.sin(2 * np.pi * q) / (2 * np.pi)


def blend(base: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-frame interpolation between two ``(10,)`` poses, ``weight`` ``(T,)`` -> ``(T, 10)``."""
    return base[None, :] + weight[:, None] * (target - base)[None, :]


def plateau(q: np.ndarray, ramp: float) -> np.ndarray:
    """0 at the ends of ``[0, 1]``, smoothly up to 1 within ``ramp`` of each end."""
    return smoothstep(np.minimum(q, 1.0 - q) / ramp)


def glide(q: np.ndarray, ramp: float) -> np.ndarray:
    """Monotone ``[0, 1] -> [0, 1]`` map at constant speed ``1 / (1 - ramp)`` except within ``ramp`` of each end,
    where the speed rises from (and falls back to) 0 smoothly (its speed is :func:`smoothstep` shaped).

    Spreading a rotation this way keeps its largest step per frame within ``1 / (1 - ramp)`` of the mean.
    """
    q = np.clip(q, 0.0, 1.0)
    def rise(x):  # the integral of smoothstep over [0, x]
        return x**3 - 0.5 * x**4

    head = ramp * rise(np.minimum(q, ramp) / ramp)
    tail = ramp * rise(np.minimum(1.0 - q, ramp) / ramp)
    middle = np.clip(q, ramp, 1.0 - ramp) - ramp
    return (head + middle + (0.5 * ramp - tail)) / (1.0 - ramp)


# Timing of the rotations (v3). A rotation of 180 degrees or more between two sampled frames reads as the other
# sense, so every rotation spreads at almost constant speed over almost the whole element (docs/syngym.md).
SALTO_EDGE = 0.10  # take-off and landing (crouch) take this fraction of the element each
SPIN_RAMP = 0.15  # salto rotation: speeds up over the first 15% of the element, slows down over the last 15%
TWIST_RAMP = 0.25  # twists (over the flight) and a circle's turn
TURN_EDGE = 0.18  # rising onto the supporting leg and coming down
CIRCLE_EASE = 0.3  # a circle's speed varies by +-30% (faster at the bottom)
CIRCLE_TURN_START = 0.35  # a circle's turn spreads over the element's last 65%


def salto(s: np.ndarray, shape: str, rotations: float, twists: float, height: float, travel: float,
          twist_sign: float) -> Track:
    """Take-off, a flight of ``rotations`` saltos (and ``twists`` twists) in ``shape``, landing.

    ``height`` (body units) is the flight's extra lift at its apex; ``travel`` (body units) the forward
    displacement; ``twist_sign`` (+1/-1) the twist direction. The rotation begins in the take-off and ends in
    the landing (:data:`SPIN_RAMP`), so that it is spread over the whole element.
    """
    edge = SALTO_EDGE
    q = np.clip((s - edge) / (1.0 - 2.0 * edge), 0.0, 1.0)  # flight phase
    near_ground = np.minimum(s, 1.0 - s)
    crouch = np.where(near_ground < edge, np.sin(np.pi * near_ground / edge), 0.0)  # dips at take-off and landing
    poses = blend(STAND, SALTO_SHAPES[shape], plateau(q, 0.22))
    poses = poses + crouch[:, None] * (CROUCH - STAND)[None, :]
    spin = 360.0 * rotations * glide(s, SPIN_RAMP)
    twist = 360.0 * twists * twist_sign * glide(q, TWIST_RAMP)
    lift = height * 4.0 * q * (1.0 - q)
    return Track(poses, spin, twist, "ground", travel * smoothstep(s), lift)


def turn(s: np.ndarray, shape: str, turns: float, turn_sign: float) -> Track:
    """Rise onto the right leg in ``shape``, turn ``turns`` times about the vertical, come down; the turn
    spreads over the whole element (it starts while rising)."""
    poses = blend(STAND, TURN_SHAPES[shape], plateau(s, TURN_EDGE))
    yaw = 360.0 * turns * turn_sign * glide(s, SPIN_RAMP)
    zeros = np.zeros_like(s)
    return Track(poses, zeros, yaw, "pivot", zeros, zeros)


def circle(s: np.ndarray, shape: str, turns: float, turn_sign: float) -> Track:
    """A full circle around the bar from handstand to handstand in ``shape``; ``turns`` turns in its second part."""
    poses = blend(HANDSTAND, CIRCLE_SHAPES[shape], plateau(s, 0.3))
    spin = 180.0 + 360.0 * ease(s, CIRCLE_EASE)
    twist = 360.0 * turns * turn_sign * glide((s - CIRCLE_TURN_START) / (1.0 - CIRCLE_TURN_START), TWIST_RAMP)
    zeros = np.zeros_like(s)
    return Track(poses, spin, twist, "hands", zeros, zeros)


def rest_motion(num_frames: int, motion: str, start_x: float, end_x: float, facing: int) -> np.ndarray:
    """Placed joints ``(T, J, 3)`` of the figure waiting between elements.

    Ground events: standing with arms down, walking from ``start_x`` to ``end_x`` (body units); bars: a
    handstand on the bar. ``facing`` +1/-1 mirrors as in :func:`orient`.
    """
    zeros = np.zeros(num_frames)
    if motion == "circle":
        track = Track(np.repeat(HANDSTAND[None], num_frames, 0), zeros + 180.0, zeros, "hands", zeros, zeros)
        return orient(place(track, world_joints(track)), 1, facing)
    track = Track(np.repeat(STAND_REST[None], num_frames, 0), zeros, zeros, "ground", zeros, zeros)
    placed = orient(place(track, world_joints(track)), 1, facing)
    walk = start_x + (end_x - start_x) * smoothstep(np.linspace(0.0, 1.0, num_frames))
    placed[..., 0] += (walk - placed[:, J["pelvis"], 0])[:, None]
    return placed


@dataclass(frozen=True)
class Performance:
    """How one clip performs its element (the per-clip timing nuisances).

    The clip has ``num_frames`` frames: ``lead_in`` still frames, ``element_frames`` frames of the element
    (its speed), then still frames to the end. ``warp`` in ``(-1, 1)`` bends the element's time (speed varies
    inside it); ``facing`` is +1 (right) or -1 (left) at the start; ``height`` and ``travel`` (body units) shape
    the flight of saltos; ``spin_sign`` (+1/-1) is the direction of twists and turns.
    """

    num_frames: int
    lead_in: int
    element_frames: int
    warp: float
    facing: int
    height: float
    travel: float
    spin_sign: int

    def phase(self) -> np.ndarray:
        """Element phase per frame, ``(T,)`` in ``[0, 1]``: 0 during the lead-in, 1 during the lead-out."""
        s = (np.arange(self.num_frames) - self.lead_in + 0.5) / self.element_frames
        s = np.clip(s, 0.0, 1.0)
        return s + self.warp * np.sin(2 * np.pi * s) / (2 * np.pi)


def element_track(motion: str, shape: str, rotations: float, turns: float, perf: Performance) -> Track:
    """The canonical (facing right, forward) track of one element performed as ``perf`` says."""
    s = perf.phase()
    if motion == "salto":
        return salto(s, shape, rotations, turns, perf.height, perf.travel, perf.spin_sign)
    if motion == "turn":
        return turn(s, shape, turns, perf.spin_sign)
    if motion == "circle":
        return circle(s, shape, turns, perf.spin_sign)
    raise ValueError(f"unknown motion {motion!r}; expected 'salto', 'turn' or 'circle'")


def orient(placed: np.ndarray, direction: int, facing: int) -> np.ndarray:
    """Apply the element's direction and the performer's facing to canonical placed joints ``(T, J, 3)``.

    A backward element is the canonical (forward) one played in reverse; facing left mirrors ``x``.
    """
    out = placed[::-1] if direction < 0 else placed
    out = out.copy()
    if facing < 0:
        out[..., 0] *= -1.0
    return out


def figure_motion(motion: str, shape: str, direction: int, rotations: float, turns: float,
                  perf: Performance) -> np.ndarray:
    """Placed joints ``(T, J, 3)`` (body units, see ``syngym_render.place``) of one performed element.

    Ground elements are centred horizontally on the middle of the pelvis's path, so ``x = 0`` is the centre
    of the action whatever the direction or facing; bar elements keep the bar at ``x = 0``.
    """
    track = element_track(motion, shape, rotations, turns, perf)
    placed = place(track, world_joints(track))
    if track.anchor != "hands":
        pelvis_x = placed[:, J["pelvis"], 0]
        placed[..., 0] -= 0.5 * (pelvis_x.min() + pelvis_x.max())
    return orient(placed, direction, perf.facing)
