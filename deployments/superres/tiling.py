"""Cutting an image into fixed-size overlapping tiles and stitching the upscaled tiles back.

Every tile of an image has the same shape, ``(C, tile_size, tile_size)`` where the image is at
least ``tile_size`` pixels each way, so tiles of one image and of concurrent requests stack into
one batch, and memory per forward pass is bounded whatever the image size. Along an axis shorter
than ``tile_size`` the tile is as long as the image itself: no padding, so a small image is one
tile, upscaled exactly as the whole image is (padding would change its borders, which the network
sees as zero padding in training, and would waste compute). Only an axis shorter than
``MIN_TILE_SIDE`` is padded, by edge replication, and the padding is cropped after. Adjacent tiles
overlap by ``overlap`` pixels; stitching keeps, for each output pixel, the tile whose centre is
nearest (the cut runs through the middle of each overlap). With ``overlap`` at least twice the
network's receptive radius, the stitched output equals the output of the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MIN_TILE_SIDE = 8  # pixels; the exported ONNX models take inputs from 8 px on (deployments/sr_onnx.py)


def axis_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile start offsets (pixels) along one axis of ``length >= tile_size`` pixels.

    The last tile is pushed back to end exactly at the edge, so it may overlap more. One tile as
    long as the axis needs no overlap.

    Raises:
        ValueError: ``length < tile_size``, or more than one tile and ``overlap`` not in [0, tile_size).
    """
    if length < tile_size:
        raise ValueError(f"length {length} is shorter than the tile size {tile_size}")
    if length == tile_size:
        return [0]
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, {tile_size}), got {overlap}")
    stride = tile_size - overlap
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]


def axis_cuts(starts: list[int], tile_size: int, length: int) -> list[tuple[int, int]]:
    """For each tile, the ``[begin, end)`` range of the axis (pixels) that it contributes.

    The cut between two neighbours sits in the middle of their overlap.
    """
    cuts = []
    for i, start in enumerate(starts):
        begin = 0 if i == 0 else (starts[i - 1] + tile_size + start) // 2
        end = length if i == len(starts) - 1 else (start + tile_size + starts[i + 1]) // 2
        cuts.append((begin, end))
    return cuts


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one ``(height, width)`` image lie; sizes in LR pixels.

    ``tile_height/width`` are ``tile_size``, or the image's own side where that is shorter (but at
    least ``MIN_TILE_SIDE``); ``padded_height/width`` are the image's sides, edge-padded to at
    least ``MIN_TILE_SIDE``; ``height/width`` are the image's own.
    """

    height: int
    width: int
    tile_size: int
    overlap: int

    @property
    def tile_height(self) -> int:
        """Height of every tile, pixels."""
        return min(self.tile_size, max(self.height, MIN_TILE_SIDE))

    @property
    def tile_width(self) -> int:
        """Width of every tile, pixels."""
        return min(self.tile_size, max(self.width, MIN_TILE_SIDE))

    @property
    def padded_height(self) -> int:
        """Height after edge padding to at least one tile, pixels."""
        return max(self.height, self.tile_height)

    @property
    def padded_width(self) -> int:
        """Width after edge padding to at least one tile, pixels."""
        return max(self.width, self.tile_width)

    @cached_property
    def rows(self) -> list[int]:
        """Tile start offsets along the height, pixels."""
        return axis_starts(self.padded_height, self.tile_height, self.overlap)

    @cached_property
    def cols(self) -> list[int]:
        """Tile start offsets along the width, pixels."""
        return axis_starts(self.padded_width, self.tile_width, self.overlap)

    @cached_property
    def row_cuts(self) -> list[tuple[int, int]]:
        """The rows (``[begin, end)``, pixels) that each tile row contributes."""
        return axis_cuts(self.rows, self.tile_height, self.padded_height)

    @cached_property
    def col_cuts(self) -> list[tuple[int, int]]:
        """The columns (``[begin, end)``, pixels) that each tile column contributes."""
        return axis_cuts(self.cols, self.tile_width, self.padded_width)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def split_tiles(image: np.ndarray, tile_size: int, overlap: int) -> tuple[np.ndarray, TilePlan]:
    """Cut ``(H, W, C)`` into tiles.

    Returns ``(N, C, tile_height, tile_width)`` of the image's dtype, in row-major order (tile
    sides: ``tile_size``, or the image's side where it is shorter; :class:`TilePlan`), and the
    plan that :func:`stitch_tiles` needs.
    """
    height, width = image.shape[:2]
    plan = TilePlan(height, width, tile_size, overlap)
    padded = np.pad(image, ((0, plan.padded_height - height), (0, plan.padded_width - width), (0, 0)), mode="edge")
    tile_h, tile_w = plan.tile_height, plan.tile_width
    tiles = [padded[y : y + tile_h, x : x + tile_w] for y in plan.rows for x in plan.cols]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2)), plan


def new_canvas(plan: TilePlan, scale: int, channels: int, dtype: np.dtype = np.uint8) -> np.ndarray:
    """An empty ``(padded_height*scale, padded_width*scale, channels)`` output for :func:`paste_tile`."""
    return np.empty((plan.padded_height * scale, plan.padded_width * scale, channels), dtype=dtype)


def paste_tile(canvas: np.ndarray, tile: np.ndarray, index: int, plan: TilePlan, scale: int) -> None:
    """Write the part of upscaled tile ``index`` (``(C, tile_height*scale, tile_width*scale)``) that it owns.

    Tiles may be pasted in any order and as they arrive, so a caller holds only the canvas and
    the tiles in flight, never every upscaled tile at once.
    """
    row, col = divmod(index, len(plan.cols))
    y, (y0, y1) = plan.rows[row], plan.row_cuts[row]
    x, (x0, x1) = plan.cols[col], plan.col_cuts[col]
    part = tile[:, (y0 - y) * scale : (y1 - y) * scale, (x0 - x) * scale : (x1 - x) * scale]
    canvas[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = part.transpose(1, 2, 0)


def crop_canvas(canvas: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """The image's own ``(height*scale, width*scale, C)`` part of a canvas (padding dropped)."""
    return canvas[: plan.height * scale, : plan.width * scale]


def stitch_tiles(tiles: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """Join upscaled tiles ``(N, C, tile_height*scale, tile_width*scale)`` into ``(H*scale, W*scale, C)``.

    Raises:
        ValueError: the number or shape of the tiles does not fit the plan.
    """
    sides = (plan.tile_height * scale, plan.tile_width * scale)
    if tiles.shape[0] != len(plan) or tiles.shape[2:] != sides:
        raise ValueError(f"expected {len(plan)} tiles of {sides[0]}x{sides[1]}, got {tiles.shape}")
    canvas = new_canvas(plan, scale, tiles.shape[1], tiles.dtype)
    for index, tile in enumerate(tiles):
        paste_tile(canvas, tile, index, plan, scale)
    return crop_canvas(canvas, plan, scale)
