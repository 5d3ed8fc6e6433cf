"""The data plane: object storage, Parquet datasets, the feature codecs (rows <-> x), the tabular
transformer, importers, bundled data, atomic JSON objects and Delta output tables. No torch, no
models, no Ray."""
