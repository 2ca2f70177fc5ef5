"""Search engines (DEAP, Operon, PySR) behind one interface."""
