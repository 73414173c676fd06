"""Example DAGs and the task functions they run."""
