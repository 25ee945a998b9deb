"""Turning user-supplied images (paths, arrays, PIL images) into RGB PIL images, with clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError


def upright(im: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (a phone photo tagged
    'rotate 90' comes out upright), in RGB."""
    return ImageOps.exif_transpose(im).convert("RGB")


def too_large(name, err: Exception) -> ImageError:
    return ImageError(f"'{name}' is too large to decode safely ({err}). Downscale it (the model sees a few "
                      "hundred pixels a side).")


def load_image(image) -> Image.Image:
    """Return an RGB `PIL.Image` from a path, a PIL image or an HxW[xC] uint8/float array; EXIF
    orientation applied to files and PIL images."""
    if isinstance(image, Image.Image):
        return upright(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise ImageError(f"'{path}' is a folder, not an image file; pass one image file (PNG, JPEG, ...). "
                             "A dataset folder goes to --data (eval, collect, figures, causal).")
        if not path.is_file():
            raise ImageError(f"image file not found: '{path}'. Pass an existing image path or a PIL.Image.")
        try:
            with Image.open(path) as im:
                im.load()
                return upright(im)
        except Image.DecompressionBombError as err:
            raise too_large(path, err) from err
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
