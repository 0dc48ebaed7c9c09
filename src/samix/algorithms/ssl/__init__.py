"""Self-supervised algorithms (two augmented views, no labels): MoCo v1/v2 with cross-view instance mixup
for every mixing policy. Shared pieces: :mod:`.base` (two-view data, kNN evaluation, the pairing),
:mod:`.queue` (the negative dictionary)."""
