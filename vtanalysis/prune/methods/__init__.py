"""One module per pruning method (selection functions, plans and choosers)."""
