"""MLflow logging and run selection, reports and plots, submission writing."""
