"""Training: losses, learning-rate schedules, optimizers, the train state and step functions.

Each stage of a plan builds its own schedule (`schedules.make_schedule`) and optimizer
(`optimizers.make_optimizer`) and a fresh `TrainState` around the carried-over parameters
(`train_state.create_train_state`); `steps.make_train_step` / `steps.make_eval_step` give the
functions the trainer jits.
"""
