"""Caffe: a deploy prototxt and its weights, run with OpenCV's dnn module."""
