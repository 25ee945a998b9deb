"""Errors raised for bad input. Each message names the problem and the fix."""


class VTAError(ValueError):
    """Base class of vtanalysis input errors."""


class UnsupportedModelError(VTAError):
    """The model's family has no adapter."""


class PromptError(VTAError):
    """A prompt lacks image placeholders or has fewer than the images given."""


class ImageError(VTAError):
    """An image could not be read or decoded."""


class LayerError(VTAError):
    """A layer index is outside the model's depth."""


class WeightsError(VTAError):
    """A checkpoint's weights do not match the model built for it (they would load at random)."""


class MethodError(VTAError):
    """A pruning method is defined wrongly (at `prune.register`) or its chooser broke its contract
    (wrong shape or dtype of the indices, a token chosen twice)."""
