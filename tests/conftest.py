"""Test set-up: 8 fake CPU devices, so sharding is exercised on any machine."""

import atexit
import glob
import os
import shutil
import struct
import tempfile

import jax
import pytest

# Must happen before JAX starts its backends. Tests that want one device pass devices[:1].
jax.config.update("jax_num_cpu_devices", 8)

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
