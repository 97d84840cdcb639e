"""The mini suite: the paper in miniature, offline on a CPU (digits data shipped with scikit-learn)."""
