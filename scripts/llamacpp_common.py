"""What the llama.cpp scripts share: opening a GGUF file with llama-cpp-python the one way
flotilla compares against (CPU threads as given, no logits kept for every position, seed 0)."""

from llama_cpp import Llama


def open_model(path, threads, n_ctx=2048, n_batch=None):
    """A `Llama` for `path` using `threads` CPU threads; `n_batch` also sets the micro-batch."""
    extra = {} if n_batch is None else {"n_batch": n_batch, "n_ubatch": n_batch}
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 logits_all=False, verbose=False, seed=0, **extra)
