"""From a pics database to a trained, exported model: labels, split, image cache, loaders, model,
training, metrics, bundle and predict. No Optuna here: the search is built on top of it."""
