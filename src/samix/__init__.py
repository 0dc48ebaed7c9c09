"""samix: mixup-based visual representation learning.

Drop-in use::

    from samix.mixing import build_mixer
    mixer = build_mixer("cutmix", alpha=1.0, num_classes=100)
    images, targets = mixer(images, labels)      # targets: float [B, K], rows sum to 1
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
