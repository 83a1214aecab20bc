"""Evaluating and using a trained model: exact sharded evaluation (every sample counted once, for any
number of processes), loading a trained model from a weights file or run folder, the evaluation
report and its figures, classifying image files, exporting the model, and the evaluate command.

May import: the foundation, `checkpoint` and `tracking`. Never train. Nothing is imported here, so
`--help` answers without torch.
"""
