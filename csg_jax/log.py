"""The one progress logger: a line on stdout, flushed at once, written by process 0 only."""


def log(message: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top  (data and config modules load without JAX)
  if jax.process_index() == 0:
    print(message, flush=True)
