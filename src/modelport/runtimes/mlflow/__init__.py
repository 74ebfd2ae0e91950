"""MLflow: model directories, served through their native flavor's runtime or mlflow.pyfunc."""
