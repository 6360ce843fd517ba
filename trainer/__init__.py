"""Convention mining, preference pairs, LoRA training and the training job worker."""
