"""Interoperation with T5X: its checkpoint layouts (`checkpoints`), its model configurations
(`models`), its Adafactor state (`adafactor`), its gin run files (`gin_files`) and the export of
a ptjf checkpoint for T5X's trainer (`export`)."""
