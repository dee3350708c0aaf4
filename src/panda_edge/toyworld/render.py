"""A planned scene's frames as RGB pixels."""

from __future__ import annotations

import numpy as np

from panda_edge.toyworld.scenes import COLORS, FRAMES, Scene, SceneObject

RING_INNER = 0.55  # the ring's hole, of its outer radius
CROSS_BAR = 1 / 3  # the cross's bar thickness, of its size


def _mask(obj: SceneObject, center: tuple[float, float], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels (by centre) inside the shape, whose bounding box is `size` on each side."""
    dx, dy, h = np.abs(xs - center[0]), np.abs(ys - center[1]), obj.size / 2
    if obj.shape == "square":
        return (dx <= h) & (dy <= h)
    if obj.shape == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= h * h) & (r2 >= (RING_INNER * h) ** 2)
    bar = CROSS_BAR * h
    return ((dx <= h) & (dy <= bar)) | ((dy <= h) & (dx <= bar))


def render(scene: Scene) -> np.ndarray:
    """All frames of the scene as a (FRAMES, H, W, 3) uint8 RGB array."""
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32) + 0.5
    frames = np.empty((FRAMES, scene.height, scene.width, 3), np.uint8)
    frames[:] = scene.background
    for t in range(FRAMES):
        for obj in scene.objects:
            if obj.visible(t):
                frames[t][_mask(obj, obj.center(t), xs, ys)] = COLORS[obj.color]
    return frames
