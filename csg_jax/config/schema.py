"""Every config field csg_jax reads, with its default and its one-line comment, as data.

`base_config()` builds the ConfigDict that the files in csg_jax/configs start from; `comments()`
gives each dotted field's comment (`--show_config` prints them beside the values). The data
fields are defined with the data sources, in csg_jax/data/config.py.
"""

from __future__ import annotations

import ml_collections

from csg_jax import data as data_lib

# One module each in csg_jax/methods (tests check that these are its names). Each method's
# config block is here, below; the config package stays free of JAX, so that --help, config
# checks and run names never start it.
METHODS = ("std", "csg", "picnn")
DTYPES = ("float32", "bfloat16", "float16")

# (dotted field, default, comment), in the order --show_config lists them.
FIELDS = (
    ("seed", 0, "seeds initialisation, data order and augmentation"),
    ("method", "csg", "std (standard training) | csg (class-specific gates) | picnn (PICNN)"),
    ("num_epochs", 30.0, "passes over the training split (fractions allowed)"),
    ("batch_size", 128, "global batch: all devices and processes together"),
    ("eval_batch_size", 256,
     "global batch for evaluation (the last one is padded, not dropped)"),
    ("log_every_steps", 50, "progress line and metrics.jsonl row every N steps"),
    ("eval_every_steps", 0, "test-split evaluation every N steps (0: only at the end)"),
    ("checkpoint_every_steps", 500, "checkpoint every N steps (and always at the end)"),
    ("keep_checkpoints", 3, "newest checkpoints kept on disk"),
    ("tensorboard_images", True,
     "figures (gate, MI matrices, histogram, atlas) in TensorBoard"),
    ("tensorboard_atlas_filters", 64,
     "filters in the TensorBoard atlas at the end (0: none)"),
    ("init_from", "", "start from another run's weights: its workdir or a checkpoints/<step>"),
    ("init_from_skip", "", 'regex of parameters not taken from init_from, e.g. "^head/"'),
    ("mis_seed", 0, "random_state of the MI estimator's noise (the released evaluation's 0)"),
    ("std_config", "",
     "csg-compare's STD run: a config file or shipped name (empty: this config, method=std)"),

    ("model.name", "resnet20",
     "tiny | resnet{6n+2} (CIFAR) | resnet18/34/50/101/152 (ImageNet)"),
    ("model.width", 0, "base width (0: the architecture's standard 16 or 64)"),
    ("model.dtype", "float32", "trunk compute dtype: float32 | bfloat16 | float16"),
    ("model.pytorch_padding", True, 'ImageNet ResNets pad like PyTorch (False: "SAME")'),

    ("optimizer.name", "sgd", "sgd | adam"),
    ("optimizer.learning_rate", 0.1, "peak learning rate"),
    ("optimizer.momentum", 0.9, "SGD momentum (0: plain SGD)"),
    ("optimizer.nesterov", False, "Nesterov momentum for SGD"),
    ("optimizer.weight_decay", 5e-4, "coupled L2 on conv/dense kernels (0: off)"),
    ("optimizer.decay_every_parameter", False,
     "weight decay on every parameter, biases and BN too (torch.optim's), not kernels only"),
    ("optimizer.schedule", "cosine", "cosine | multistep | constant"),
    ("optimizer.warmup_steps", 0, "linear warm-up steps (cosine only)"),
    ("optimizer.milestones", (0.5, 0.75),
     "multistep: decay points as fractions of training"),
    ("optimizer.milestone_epochs", (),
     "multistep: decay after N own epochs (empty: milestones)"),
    ("optimizer.decay_factor", 0.1, "multistep: learning-rate factor at each milestone"),
    ("optimizer.grad_clip_norm", 0.0, "clip gradients to this global norm (0: off)"),
    ("optimizer.freeze", "", 'regex searched in parameter paths: frozen, e.g. "stem|stage1"'),

    ("csg.schedule", "joint", "joint (paper's loss every step) | alternate (released code)"),
    ("csg.gated_loss_weight", 1.0, "lambda1: weight of CE on the gated path (joint)"),
    ("csg.gate.init", 0.5, "initial value of every gate entry"),
    ("csg.gate.sparsity_weight", 0.01,
     "lambda2: weight of the L1 hinge max(0, ||G||_1 - d*C*K)"),
    ("csg.gate.target_density", 0.1, "d: the hinge is zero while ||G||_1 <= d*C*K"),
    ("csg.gate.projection", "max_normalize",
     "max_normalize (column max -> 1; max <= 0 closes) | released (clip_lmask exactly) | clip"),
    ("csg.gate.l1_subgradient", "jax",
     "the hinge's d|g|/dg at g = 0: jax (+1) | torch (0, the released torch.norm's)"),
    ("csg.gate.optimizer", "sgd", "optimiser of G: sgd | adam"),
    ("csg.gate.learning_rate", 0.1,
     "peak learning rate of G (same schedule shape as the trunk)"),
    ("csg.gate.momentum", 0.9, "momentum of G's SGD (0: plain SGD)"),
    ("csg.gate.nesterov", False, "Nesterov momentum for G's SGD"),
    ("csg.gate.weight_decay", 0.0, "coupled L2 on G, before its optimiser (0: off)"),
    ("csg.alternate.warmup_epochs", 10, "STD-only epochs before the first CSG epoch"),
    ("csg.alternate.period", 3,
     "epoch e >= warmup_epochs is a CSG epoch iff e % period >= min_phase"),
    ("csg.alternate.min_phase", 2, "see period"),
    ("csg.alternate.optimizer", "adam",
     "optimiser B (CSG epochs) for the trunk layers it trains"),
    ("csg.alternate.learning_rate", 1e-3, "learning rate of optimiser B"),
    ("csg.alternate.freeze", "", "extra regex of layers frozen in CSG epochs"),

    ("picnn.interpretation_weight", 2.0, "λ: weight of CE on the masked (interpretation) path"),
    ("picnn.extra_conv_width", 64,
     "K: a 3x3 conv to this many filters after the backbone (0: none, pool the backbone)"),
    ("picnn.theta.optimizer", "adam", "optimiser of Θ: adam | sgd"),
    ("picnn.theta.learning_rate", 1e-3, "peak learning rate of Θ (same schedule shape)"),
    ("picnn.theta.momentum", 0.9, "momentum of Θ's SGD (0: plain SGD)"),
    ("picnn.theta.weight_decay", 1e-4, "coupled L2 on Θ, as torch.optim.Adam's (0: off)"),
)


def base_config(data_source: str = "digits") -> ml_collections.ConfigDict:
  """Every field at its default, the data fields defaulted for `data_source`."""
  config = ml_collections.ConfigDict()
  for name, default, _ in FIELDS:
    node = config
    *parents, leaf = name.split(".")
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = default
  config.data = data_lib.default_config(data_source)  # the input pipeline (csg_jax/data)
  return config


def comments() -> dict[str, str]:
  """{"csg.gate.target_density": "d: the hinge is zero while ...", "data.path": ...}."""
  out = {name: comment for name, _, comment in FIELDS}
  out.update({f"data.{name}": comment for name, comment in data_lib.field_comments().items()})
  return out


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def describe(config) -> str:
  """Every field of `config` with its value and one-line comment, one per line."""
  notes = comments()
  rows = [(name, repr(value)) for name, value in flatten(config.to_dict()).items()]
  width = max(len(f"{n} = {v}") for n, v in rows)
  return "\n".join(f"{n} = {v}".ljust(width) + (f"  # {notes[n]}" if n in notes else "")
                   for n, v in rows)
