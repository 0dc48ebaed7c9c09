"""Self-supervised algorithms (two augmented views, no labels): MoCo v1/v2 with cross-view instance mixup
for every mixing policy (:mod:`.moco`), SAMix-I (:mod:`.samix_i`: the Mixer inside MoCo's momentum
pipeline), SAMix-C (:mod:`.samix_c`: the Mixer trained on pseudo labels of online deep clustering,
:mod:`.odc`), Inter-Intra (:mod:`.interintra`: the cluster-based baseline, CutMix between pseudo-label
clusters and Mixup within one), MoCo v2 (C) (:mod:`.moco_c`: a model-guided policy such as PuzzleMix on the
saliency of a cluster classifier). Shared pieces: :mod:`.base` (two-view data, kNN evaluation, the pairing),
:mod:`.queue` (the negative dictionary)."""
