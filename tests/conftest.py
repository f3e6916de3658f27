"""Test set-up: 8 fake CPU devices, so sharding is exercised on any machine."""

import atexit
import glob
import os
import shutil
import struct
import tempfile

import jax
import pytest

from csg_jax import platforms

# Must happen before JAX starts its backends. Tests that want one device pass devices[:1].
jax.config.update("jax_num_cpu_devices", 8)
# With the tpu extra installed on a host without a TPU: the CPU, without libtpu's TPU search.
platforms.skip_absent_tpu()

# Many tests train the same small run: JAX's persistent compilation cache, in a folder of this
# session (inherited by the launchers the tests start), compiles each program once.
_COMPILE_CACHE = tempfile.mkdtemp(prefix="csg_jax-test-xla-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
CIFAR_TARBALL = os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz")


def small_config(**overrides):
  """A digits config that trains in seconds: ResNet-8 at width 4 (with batch norm), 23 steps."""
  from csg_jax.config import base_config  # pylint: disable=g-import-not-at-top
  config = base_config("digits")
  config.model.name = "resnet8"
  config.model.width = 4
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 1.0
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.tensorboard_images = False  # no figures to draw (straight_run draws them, atlas too)
  config.update(overrides)
  return config


def tiny_shapes_config(data_path: str, cache_dir: str, method: str):
  """configs/shapes.py on a tiny shapes set (16 px): TinyCNN width 4, one epoch of 16-image
  batches; what the applications and explanation tests train in seconds."""
  from csg_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "shapes.py"))
  config.data.path = data_path
  config.data.cache_dir = cache_dir
  config.data.decode_workers = 1
  config.model.name = "tiny"
  config.model.width = 4
  config.num_epochs = 1.0
  config.batch_size = 16
  config.eval_batch_size = 8
  config.method = method
  return config


def interrupt_batches_at(monkeypatch, step, action):
  """Makes the training stream call `action` with the batch of `step` when it is asked for it;
  returns the real stream, to put back."""
  from csg_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  real = data_lib.train_batches

  def batches(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if kwargs["start_step"] + i == step:
        action(batch)
      yield batch

  monkeypatch.setattr(data_lib, "train_batches", batches)
  return real


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
  """One uninterrupted small run, shared by the tests that compare against it."""
  from csg_jax import training  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = small_config(tensorboard_images=True, tensorboard_atlas_filters=10)
  results = training.train_and_evaluate(config, workdir)
  return workdir, results


def tensorboard_events(logdir):
  """({scalar tag: [(step, value)]}, {image tag: [(step, PNG bytes)]}) of a TensorBoard log
  folder, read from the TFRecord framing with tensorboardX's Event protobuf (no TensorBoard)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars, images = {}, {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length  # length, its CRC, the record, its CRC
      for v in event.summary.value:
        if v.HasField("image"):
          images.setdefault(v.tag, []).append((event.step, v.image.encoded_image_string))
        elif v.HasField("simple_value"):
          scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  return scalars, images


@pytest.fixture
def cifar_tarball():
  if not os.path.exists(CIFAR_TARBALL):
    pytest.skip(f"real CIFAR-10 data not found at {CIFAR_TARBALL} (only on development machines)")
  return CIFAR_TARBALL
