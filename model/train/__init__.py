"""Training, evaluation and prediction for MASENet."""
