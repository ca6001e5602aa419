"""The book's figures and tables, redrawn from the runs stored in MLflow."""

import os

# Figures go to files and are never shown: Matplotlib's file backend for every module here, set
# before any of them imports pyplot (a user's own MPLBACKEND wins).
os.environ.setdefault("MPLBACKEND", "Agg")
