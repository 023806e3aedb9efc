"""`rerankd eval`: what each strategy costs or gains, measured on any BEIR-format data set (docs/strategies.md)."""
