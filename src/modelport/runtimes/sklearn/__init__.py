"""scikit-learn: skops files and trusted pickles, and the tabular contract shared with the boosting and MLflow runtimes."""
