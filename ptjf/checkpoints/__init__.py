"""Checkpoints of a run's stages: the orbax checkpointer (`checkpointer`), its gin configuration
(`config`), the checks that a checkpoint fits the model (`fit`), fingerprints that catch damaged
files (`integrity`), the input streams' saved positions (`input_positions`) and the stage
switch's checkpoint that shares its source's parameter files (`link`)."""
