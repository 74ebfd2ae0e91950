"""scikit-learn: skops files and trusted pickles, and the tabular contract that the boosting
and MLflow runtimes share."""
