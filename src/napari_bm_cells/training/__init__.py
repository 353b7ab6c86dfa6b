"""Training and evaluation of the classifier and the detector (CLI: train-*, evaluate-*)."""
