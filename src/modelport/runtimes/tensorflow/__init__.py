"""TensorFlow: Keras archives and SavedModel directories, traced once into one concrete function."""
