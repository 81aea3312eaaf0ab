"""workers: the compute side of a sweep (the driver side is `sweep`).

The layers, lowest first; a module imports only from its own layer and the ones above
it in this list (`tests/test_layers.py` enforces it):

    core/         closed sets (kinds), the model's shapes (config), files, locks,
                  devices, host load and threads, aligned host buffers
    records.py    what comes back from a worker: Measurement, QualityStats, Profile
    checkpoints/  weights from disk or a seed: safetensors, gguf, tokenizers, and the
                  source dispatcher (`source`) the rest calls
    formats/      how weights are held and multiplied: the Variant, one file per format
                  (floating, direct, factored, integer, per_token) and `registry`, GGUF
                  blocks kept as stored, SmoothQuant's folds, host packing, a variant's
                  prepared weights
    model/        the JAX graphs and their export to StableHLO, and the float graph's
                  calibration for a smoothed variant: exactly the sources (with the
                  variant's format files) a graph's cache key hashes
    tasks.py      what goes out to a worker: ModelSource, BenchTask and its parts
    compile/      iree-compile with its cache, and what dispatch names say
    runtimes/     the decode protocol (session) on IREE, XLA and llama.cpp
    measure/      the XLA reference, quality, perplexity and IREE's profiler
    point.py      the benchmark actor: one point measured, end to end

`sweep` imports the records and tasks, core, and what the driver must check or build
itself (checkpoints, the Variant, graph specs, compiles); `workers` never imports `sweep`.
"""
