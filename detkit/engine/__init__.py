"""Engine: prediction and training loops around the model."""
