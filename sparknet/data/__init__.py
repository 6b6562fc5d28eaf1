"""Data into Spark: loaders returning arrays, RDDs and DataFrames ready for training."""
