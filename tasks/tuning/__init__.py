"""Recipe search: an Optuna study whose trials are DVC experiments, and the record of what it chose."""
