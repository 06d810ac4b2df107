"""Analysis of stored sweep results: Pareto fronts, hypervolume, reports. Never runs training."""
