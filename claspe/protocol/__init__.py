"""The nnActive protocol: experiment folder, state, splits, starting budget, oracle, loop driver."""
