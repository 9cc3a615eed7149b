"""Labels, split, image cache, loaders, model and training for Swipr. Imports nothing from Optuna."""
