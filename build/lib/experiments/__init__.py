"""The book's figures and tables, redrawn from the runs stored in MLflow."""
