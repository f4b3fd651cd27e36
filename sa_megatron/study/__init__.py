"""`sa-megatron study`: a grid of training runs, length-extrapolation evaluation of each, and one report."""
