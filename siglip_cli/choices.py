"""The values each choice option takes, in one place and free of torch, so `siglip --help` stays fast.

The library modules check their arguments against these same tuples; the CLI builds its option
choices from them.
"""

POOLS = ("none", "map", "mean")  # model.py: patch embeddings, the attention-pooling head, the patch mean
NORMS = ("auto", "imagenet", "checkpoint")  # preprocess.py
DEVICES = ("auto", "cpu", "cuda", "mps")  # embed.py
DTYPES = ("float32", "bfloat16", "float16")  # precision.py: compute precision
QUANTIZE = ("none", "int8")  # precision.py
FORMATS = ("npy", "safetensors")  # writers.py: file formats in folder mode
ENGINES = ("local", "ray")  # batch.py (this machine), ray_engine.py (a Ray cluster)
OUT_DTYPES = ("float32", "float16")  # batch.py: what is stored
