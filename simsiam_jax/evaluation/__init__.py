"""Evaluation of a pretrained backbone: its features (features), the weighted kNN monitor
(knn, knn_monitor), the evaluators a pretraining run declares in config.evals (evaluators)
and linear evaluation (linear_eval)."""
