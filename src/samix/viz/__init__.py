"""Looking at mixed samples and training curves (matplotlib, Agg, no display).

* :func:`load_sample_photos` -- real photos bundled with scikit-image as a float
  ``[N, 3, size, size]`` tensor in ``[0, 1]``.
* :func:`mixing_cells` / :func:`mixing_grid` -- one pair of photos mixed by every
  policy at every requested ``lam`` (rows = policies, columns = ``lam``), the figure
  behind ``samix show``.
* :func:`mask_grid_cells` / :func:`save_mask_grid` -- masks of a learnable mixer
  (AutoMix, SAMix) at several ``lam`` with the mixes they make.
* :func:`save_image_grid`, :func:`plot_curves` -- generic helpers (image grids,
  metric curves) for the engine.

Convention shown in the grid (the one of :mod:`samix.mixing.base`)::

    cell = mask * A + (1 - mask) * B,     realised lam = mask.mean()

``A`` is the *original* sample and ``B`` its partner, so a cell at ``lam = 0.9``
is mostly ``A``. Each cell is produced by the policy's own ``_mix`` hook with the
requested ``lam`` forced and the fixed pairing ``index = [1, 0]``; policies that
draw their own geometry (e.g. resizemix picks its own box) may realise another
share, which is why every cell is annotated with the realised ``lam``.

``docs/img/mixing_grid.png`` is ``mixing_grid("docs/img/mixing_grid.png", seed=4, colors=256)``.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas,
never through ``pyplot`` (:mod:`samix._plot`): no global state, no display, safe in
worker threads.

Modules: ``images`` (photos, image grids), ``grid`` (the mixing grid), ``masks``
(learned masks), ``curves`` (metric curves), ``_common`` (shared checks and conversions).
Every name is importable from ``samix.viz``, and setting one here (e.g. a test's
``monkeypatch.setattr(samix.viz, "mixing_cells", spy)``) sets it in its module.
"""

from __future__ import annotations

from samix._facade import forward_names

from . import curves, grid, images, masks
from .curves import plot_curves
from .grid import DEFAULT_LAMS, MixCells, default_policies, mixing_cells, mixing_grid
from .images import SAMPLE_PHOTOS, load_sample_photos, save_image_grid
from .masks import mask_grid_cells, save_mask_comparison, save_mask_grid

__all__ = ["DEFAULT_LAMS", "MixCells", "SAMPLE_PHOTOS", "default_policies", "load_sample_photos",
           "mask_grid_cells", "mixing_cells", "mixing_grid", "plot_curves", "save_image_grid",
           "save_mask_comparison", "save_mask_grid"]

forward_names(__name__, {name: module for module in (curves, grid, images, masks) for name in module.__all__})
