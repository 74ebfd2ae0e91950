"""Gradient-boosted trees: XGBoost and LightGBM boosters, through the tabular contract."""
