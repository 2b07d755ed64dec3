"""What a torch process needs around a model: the device, the process group under torchrun
(`distributed`), checkpoints and resuming (`checkpoint`), and building a recipe's model and data or a saved
run's, checked against what the run was trained on (`build`).

May import files, recipe, data and models; training, evaluation and deploy stand on it.
"""
