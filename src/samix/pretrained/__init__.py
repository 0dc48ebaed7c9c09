"""Pre-trained Mixers (SAMix-P), one floor above :mod:`samix.generators`:

* :mod:`.format` -- the ``.safetensors`` file (metadata schema, read/write, atomic);
* :mod:`.runtime` -- the frozen encoder stages + generator (:class:`PretrainedMixer`);
* :mod:`.policy` -- the ``samix_p`` mixing policy that wraps the runtime.

Export from a run directory is the engine's (:mod:`samix.engine.export`, ``samix export-mixer``); encoder
pruning is the models' (:mod:`samix.models.pruning`).
"""

from samix.models.pruning import encoder_state_dict, prune_encoder

from .format import (
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    MixerMetadata,
    PathLike,
    read_mixer_metadata,
    save_pretrained_mixer,
    write_mixer_metadata,
)
from .runtime import PretrainedMixer, load_pretrained_mixer
from .policy import SAMixP

__all__ = ["FORMAT", "FORMAT_VERSION", "META_KEY", "MixerMetadata", "PathLike", "PretrainedMixer", "SAMixP",
           "encoder_state_dict", "load_pretrained_mixer", "prune_encoder", "read_mixer_metadata",
           "save_pretrained_mixer", "write_mixer_metadata"]
