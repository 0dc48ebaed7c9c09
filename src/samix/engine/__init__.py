"""The engine: assembly from a config (:mod:`.assembly`), the loop (:mod:`.loop`: ``Stepper``,
``train_one_epoch``), the run directory (:mod:`.rundir`), checkpoints, DDP and ``samix train``
(:func:`samix.engine.trainer.train`). It knows no method by name."""
