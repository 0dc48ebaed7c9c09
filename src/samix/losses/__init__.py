"""Losses for mixup training: mixed CE / soft-target CE / mixed BCE, Decoupled
Mixup, SAMix's pBCE and eta-balanced loss, mixup infoNCE and non-parametric BCE.

Conventions (the same as :class:`samix.mixing.MixResult`)
------------------------------------------------------------
* ``logits``: float ``[B, K]`` (any float dtype; fp16/bf16 are up-cast, see below).
* ``labels``: integer class ids ``[B]`` or probability rows ``[B, K]``.
* ``lam``: float tensor ``[B]`` (or a 0-d tensor / Python number, broadcast to
  the batch): the share of the ORIGINAL sample ``i`` in mixed sample ``i``.
* ``index``: long ``[B]``: the partner of sample ``i`` is ``index[i]``, so
  ``1 - lam[i]`` weights class ``y[index[i]]``.
* ``lam=None`` / ``index=None`` mean "no mixing" (``lam = 1``,
  ``index = arange(B)``); every loss also works with an explicit ``lam = 1``,
  ``index = arange(B)``.
* For a sample ``i`` write ``a = y[i]``, ``b = y[index[i]]`` and
  ``lam = lam[i]``; ``z`` is its row of logits.

Numerics: every loss is computed in float32 (float64 stays float64), whatever
the dtype of the inputs, through ``log_softmax`` / ``logsigmoid`` /
``logsumexp`` / ``binary_cross_entropy_with_logits``, so values and gradients
stay finite for logits of magnitude 1e4 and for fp16/bf16 inputs. The result is
float32 (float64 for float64 inputs); gradients flow back in the input dtype.

Validation: shapes and dtypes are always checked (``TypeError`` for a wrong
type/dtype, ``ValueError`` for a wrong shape or value, both naming the
argument). Value checks that would read tensor contents (label range,
``lam`` in [0, 1], ``index`` range) run on CPU tensors only: on an accelerator
they would force a host synchronisation every step; there an out-of-range
label or index trips the device-side bounds check instead.

``reduction``: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (one value
per sample, ``[B]``).

Registry: :func:`build_loss` ``(name, **options)`` returns a callable
``loss(logits, labels, lam=None, index=None)``; :func:`list_losses` gives the
names.

Modules: ``classification`` (soft-target CE, mixed CE, mixed BCE), ``decoupled``
(Decoupled Mixup), ``samix_losses`` (pBCE, eta-balanced), ``contrastive`` (mixup
infoNCE, non-parametric BCE), ``registry`` (register/list/build, :class:`MixupLoss`),
``_common`` (validation and preparation shared by all of them). Everything is
importable from ``samix.losses``.
"""

from ._common import DECOUPLED_BASES, PBCE_VARIANTS, REDUCTIONS, LamLike  # noqa: F401 (public constants)
from .classification import mixed_binary_cross_entropy, mixed_cross_entropy, soft_target_cross_entropy
from .contrastive import cross_view_mixup_infonce, mixup_infonce, moco_infonce, nonparametric_bce
from .decoupled import decoupled_mixup_loss
from .registry import LOSSES, MixupLoss, build_loss, list_losses, register_loss  # noqa: F401 (LOSSES)
from .samix_losses import eta_balanced_loss, pbce_loss

__all__ = [
    "soft_target_cross_entropy",
    "mixed_cross_entropy",
    "mixed_binary_cross_entropy",
    "decoupled_mixup_loss",
    "pbce_loss",
    "eta_balanced_loss",
    "mixup_infonce",
    "moco_infonce",
    "cross_view_mixup_infonce",
    "nonparametric_bce",
    "MixupLoss",
    "register_loss",
    "build_loss",
    "list_losses",
    "REDUCTIONS",
]
