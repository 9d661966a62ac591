"""The names of bnnflow's own networks, in one light place (the CLI lists them without importing torch).

models/zoo.py defines the networks and their variants under these names.
"""

MODEL_TITLES = {"resnete": "ResNetE", "densenet": "BinaryDenseNet", "cnv": "CNV-W1A1"}
MODEL_NAMES = tuple(MODEL_TITLES)
