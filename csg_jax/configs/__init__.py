"""The configs that ship with csg_jax: `--config NAME` (or a path such as configs/NAME.py from a
checkout, where configs/ is this folder). Each file defines get_config()."""
