"""Turning user-supplied images (paths, arrays, PIL images) into RGB PIL images, with clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError


def load_image(image) -> Image.Image:
    """Return an RGB `PIL.Image` from a path, a PIL image or an HxW[xC] uint8/float array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image file not found: '{path}'. Pass an existing image path or a PIL.Image.")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(
                f"could not decode image '{path}' ({err}). The file is corrupt or not an image; "
                "re-export it as PNG or JPEG."
            ) from err
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"image array has shape {image.shape}; expected HxW, HxWx3 or HxWx4.")
        return Image.fromarray(arr[..., :3])
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, a PIL.Image or a numpy array.")
