"""Formula discovery: engines, search CLI, Pareto review, export and audit."""
