"""csg_jax.data TFDS source: reading through tfds.testing.mock_data, preparing a data set built
offline from PNG files (no download, no TensorFlow), the one-line errors of unprepared data, and
a download that cannot happen: a quick failure that leaves data_dir as it was."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from csg_jax import data
from csg_jax.data import tfds_source
from csg_jax.errors import CSGError
from conftest import REPO

tfds = pytest.importorskip("tensorflow_datasets")


class CsgTinyPngs(tfds.core.GeneratorBasedBuilder):
  """PNG files under <data_dir>/downloads/manual/<split>/<class>/, as ImageNet's builder reads its
  archives: TFDS's builder machinery end to end, offline. Files are stored as encoded: no TF."""
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Written by the test."
  CLASSES = ("dark", "light")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 3)),
        "label": tfds.features.ClassLabel(names=self.CLASSES)}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(dl_manager.manual_dir / split)
            for split in ("train", "test")}

  def _generate_examples(self, root):
    for path in sorted(root.glob("*/*.png")):
      yield path.name, {"image": path, "label": path.parent.name}


class CsgUnreachable(tfds.core.GeneratorBasedBuilder):
  """Downloads its one file from `url_infos`, set by the test to a port nothing listens on."""
  VERSION = tfds.core.Version("1.0.0")
  url_infos = {}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 3)),
        "label": tfds.features.ClassLabel(names=("a", "b"))}))

  def _split_generators(self, dl_manager):
    path = dl_manager.download(next(iter(self.url_infos)))
    return {"train": self._generate_examples(path)}

  def _generate_examples(self, path):
    yield from ()


class CsgFailsMidway(CsgUnreachable):
  """Fails as a download cut off midway does, after one file finished (with the .INFO that TFDS
  writes last) and another was partly written into TFDS's temporary folder."""
  url_infos = {"https://files.example/done.bin": None, "https://files.example/part.bin": None}

  def _split_generators(self, dl_manager):
    folder = dl_manager.download_dir / self.name
    (folder / "part.bin.tmp.0123").mkdir(parents=True)
    (folder / "part.bin.tmp.0123" / "part.bin").write_bytes(b"half")
    (folder / "done.bin").write_bytes(b"whole")
    (folder / "done.bin.INFO").write_text(json.dumps({"urls": ["https://files.example/done.bin"]}))
    (dl_manager.download_dir / "extracted" / "ZIP.done.bin").mkdir(parents=True)
    raise ConnectionError("Connection reset by peer")


def _closed_port() -> int:
  """A local port nothing listens on: connecting is refused at once."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tree(root) -> set[str]:
  return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root)
          for n in dirs + files}


@pytest.fixture(name="reachable")
def _reachable(monkeypatch):
  """Every host reachable, without the network (mock_data's download_and_prepare does nothing)."""
  monkeypatch.setattr(tfds_source, "can_connect", lambda host, port: None)


@pytest.fixture(name="no_proxy_env")
def _no_proxy_env(monkeypatch):
  for var in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"):
    monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(var.upper(), raising=False)


def _config(**overrides):
  cfg = data.default_config("tfds")
  cfg.prefetch = 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_mock_cifar10_through_data_source(reachable):
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load_dataset(_config())
    # Without metadata files the mock names CIFAR-10's classes '0'..'9'.
    assert ds.name == "cifar10" and ds.class_names == tuple("0123456789")
    assert ds.image_shape == (32, 32, 3)
    assert isinstance(ds.splits["train"], tfds_source.TfdsSplit)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (20, 20)
    images, labels = ds.splits["train"].read(np.array([7, 2, 5]))
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert labels.dtype == np.int32 and ((labels >= 0) & (labels < 10)).all()
    for i, index in enumerate([7, 2, 5]):  # Read order is the requested order.
      one, label = ds.splits["train"].read(np.array([index]))
      np.testing.assert_array_equal(one[0], images[i])
      assert label[0] == labels[i]

    batch = next(data.train_batches(ds, _config(), global_batch_size=8, seed=0))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    seen = sum(int(b["mask"].sum()) for b in data.eval_batches(ds, _config(),
                                                             global_batch_size=6))
    assert seen == 20


def test_mock_cifar10_resized(reachable):
  with tfds.testing.mock_data(num_examples=4):
    ds = data.load_dataset(_config(image_size=16))
    assert ds.image_shape == (16, 16, 3)
    assert ds.splits["test"].read(np.arange(4))[0].shape == (4, 16, 16, 3)


def test_unknown_data_set_is_one_line():
  with pytest.raises(CSGError, match="TFDS cannot open data set 'no_such_data_set_xyz'") as e:
    data.load_dataset(_config(name="no_such_data_set_xyz", download=False))
  assert "\n" not in str(e.value)  # TFDS's own message lists every data set on further lines


def test_unprepared_data_set_without_download_names_it_and_the_command(tmp_path):
  with pytest.raises(CSGError) as e:
    data.load_dataset(_config(data_dir=str(tmp_path), download=False))
  message = str(e.value)
  assert "\n" not in message and f"'cifar10' is not prepared in data_dir {tmp_path}" in message
  assert (f'`pip install -e ".[tfds]" && python launch/prepare_tfds.py --name=cifar10 '
          f"--data_dir={tmp_path}`") in message
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_unprepared_data_set_stops_the_run_before_the_workdir_exists(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config",
       os.path.join(REPO, "configs", "cifar10_resnet20.py"), "--config.data.download=False",
       f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'new' / 'run'}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "'cifar10' is not prepared" in errors[0]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "new")


def test_missing_module_while_preparing_names_it_and_the_command():
  class Builder:  # what TFDS does when TensorFlow is absent: re-raises with the import error
    data_dir_root = "/data/tfds"

    def is_prepared(self):
      return False

    def download_and_prepare(self, file_format):
      assert file_format == "array_record"
      try:
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
      except ModuleNotFoundError as e:
        raise RuntimeError("Failed to encode example") from e

  with pytest.raises(CSGError) as e:
    tfds_source.prepare(Builder(), "cifar10", probe=lambda host, port: None)
  assert str(e.value).startswith("Preparing TFDS data set 'cifar10' needs the Python module "
                                 "'tensorflow'")
  assert "python launch/prepare_tfds.py --name=cifar10 --data_dir=/data/tfds`" in str(e.value)


def _write_pngs(manual, per_class):
  """{first pixel value: (split, label)}; pixel (v, v + 1, v + 2) everywhere in image v."""
  expected = {}
  for split, count in per_class.items():
    for label, name in enumerate(CsgTinyPngs.CLASSES):
      (manual / split / name).mkdir(parents=True)
      for _ in range(count):
        value = 10 + 5 * len(expected)
        pixel = np.array([value, value + 1, value + 2], np.uint8)
        Image.fromarray(np.tile(pixel, (4, 4, 1))).save(manual / split / name / f"{value}.png")
        expected[value] = (split, label)
  return expected


def test_prepared_offline_then_read_back(tmp_path):
  expected = _write_pngs(tmp_path / "tfds" / "downloads" / "manual", {"train": 4, "test": 2})
  cfg = _config(name="csg_tiny_pngs", data_dir=str(tmp_path / "tfds"), crop_padding=0,
                flip=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  ds = data.load_dataset(cfg)  # download=True: TFDS's builder prepares array_record files
  assert list(tmp_path.glob("tfds/csg_tiny_pngs/1.0.0/*.array_record*"))
  assert ds.class_names == CsgTinyPngs.CLASSES and ds.image_shape == (4, 4, 3)
  for split in ("train", "test"):
    images, labels = ds.splits[split].read(np.arange(len(ds.splits[split])))
    assert sorted(zip(images[:, 0, 0, 0].tolist(), labels.tolist())) == sorted(
        (value, label) for value, (s, label) in expected.items() if s == split)
    assert (images == images[:, :1, :1]).all()  # every pixel of an image alike
    np.testing.assert_array_equal(images[..., 2] - images[..., 0], 2)  # channel order kept
  swapped = data.load_dataset(_config(name="csg_tiny_pngs", data_dir=str(tmp_path / "tfds"),
                                      download=False, train_split="test", test_split="train"))
  assert (len(swapped.splits["train"]), len(swapped.splits["test"])) == (4, 8)

  # Prepared: read without download; a quarter of each class as 'val' (one of four).
  cfg.download, cfg.validation_fraction = False, 0.25
  ds = data.load_dataset(cfg, seed=3)
  assert (len(ds.splits["train"]), len(ds.splits["val"]), len(ds.splits["test"])) == (6, 2, 4)
  val_images, val_labels = ds.splits["val"].read(np.arange(2))
  assert sorted(val_labels.tolist()) == [0, 1]
  assert ds.splits["val"].labels.tolist() == val_labels.tolist()  # read without decoding
  batch = next(data.train_batches(ds, cfg, global_batch_size=6, seed=0))  # one whole epoch
  values = np.round(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()
  assert [expected[v] for v in values] == [("train", l) for l in batch["label"].tolist()]
  assert sorted(values + val_images[:, 0, 0, 0].tolist()) == sorted(
      v for v, (s, _) in expected.items() if s == "train")


def test_out_of_range_label_names_the_split():
  source = [{"image": np.zeros((4, 4, 3), np.uint8), "label": 12}]
  split = tfds_source.TfdsSplit(source, "validation", None, 10, lambda: source)
  with pytest.raises(CSGError, match=r"Split 'validation' has label 12 outside \[0, 10\)"):
    split.read(np.array([0]))


@pytest.mark.parametrize("fresh", [False, True])
def test_unreachable_download_host_fails_at_once_and_leaves_data_dir_as_it_was(
    tmp_path, monkeypatch, no_proxy_env, fresh):
  """The real probe, against a local port that refuses: no retries (TFDS's own would take about
  200 s), one line naming the host and the fix, and data_dir as it was (absent, if it was)."""
  port = _closed_port()
  monkeypatch.setattr(CsgUnreachable, "url_infos", {f"http://127.0.0.1:{port}/file.bin": None})
  data_dir = tmp_path / "new" / "tfds" if fresh else tmp_path / "tfds"
  if not fresh:
    (data_dir / "keep").mkdir(parents=True)
    (data_dir / "keep" / "notes.txt").write_text("mine")
    (data_dir / "downloads" / "manual").mkdir(parents=True)
  before = _tree(tmp_path)
  start = time.monotonic()
  with pytest.raises(CSGError) as e:
    data.load_dataset(_config(name="csg_unreachable", data_dir=str(data_dir)))  # download=True
  assert time.monotonic() - start < 10
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("TFDS data set 'csg_unreachable' cannot be downloaded: "
                            f"127.0.0.1:{port}, where its files are downloaded from, cannot be "
                            "reached (")
  assert message.endswith(
      "Prepare it on a machine with internet access (`pip install -e \".[tfds]\" && python "
      "launch/prepare_tfds.py --name=csg_unreachable --data_dir=<dir>`) and copy "
      f"<dir>/csg_unreachable into {data_dir}, or set data.data_dir to a prepared copy.")
  assert _tree(tmp_path) == before
  assert logging.root.manager.disable == logging.NOTSET  # library logging as it was


def test_a_resolver_that_never_answers_costs_the_timeout(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "PROBE_TIMEOUT_S", 0.2)
  release = threading.Event()

  def hangs(host, port):
    release.wait(30)

  builder = tfds_source.open_builder("csg_unreachable", str(tmp_path))
  start = time.monotonic()
  try:
    with pytest.raises(CSGError, match=r"cannot be reached \(no answer within 0.2 s\)"):
      tfds_source.prepare(builder, "csg_unreachable", probe=hangs)
    assert time.monotonic() - start < 2
  finally:
    release.set()
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fresh", [False, True])
def test_failed_prepare_removes_what_it_wrote_but_finished_downloads(tmp_path, fresh):
  data_dir = tmp_path / "new" / "tfds" if fresh else tmp_path / "tfds"
  if not fresh:
    (data_dir / "keep").mkdir(parents=True)
    (data_dir / "downloads" / "csg_fails_midway").mkdir(parents=True)
    (data_dir / "downloads" / "csg_fails_midway" / "old.bin.tmp.9999").mkdir()
    (data_dir / "downloads" / "extracted").mkdir()
  before = _tree(tmp_path)
  builder = tfds_source.open_builder("csg_fails_midway", str(data_dir))
  with pytest.raises(CSGError, match="TFDS could not download and prepare 'csg_fails_midway' "
                     r"into .*: ConnectionError: Connection reset by peer\. Prepare it"):
    tfds_source.prepare(builder, "csg_fails_midway", probe=lambda host, port: None)
  done = os.path.join(os.path.relpath(data_dir, tmp_path), "downloads", "csg_fails_midway",
                      "done.bin")
  folders = {done[:i] for i, c in enumerate(done) if c == os.sep}
  # What was there stays; of what the attempt wrote, only the finished download (TFDS reuses it).
  assert _tree(tmp_path) == before | folders | {done, done + ".INFO"}
  # The next attempt connects only for what is still to download.
  assert tfds_source.download_hosts(builder) == {
      ("files.example", 443): "where its files are downloaded from"}


def test_download_hosts_through_the_environment_proxy(tmp_path, monkeypatch, no_proxy_env):
  class Builder:
    data_dir_root = str(tmp_path)
    url_infos = {"https://a.example/x.tgz": None, "http://b.example:8080/y.tgz": None,
                 "https://a.example/z.tgz": None, "ftp://c.example/w.gz": None}

  assert tfds_source.download_hosts(Builder()) == {
      ("a.example", 443): "where its files are downloaded from",
      ("b.example", 8080): "where its files are downloaded from",
      ("c.example", 21): "where its files are downloaded from"}
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  monkeypatch.setenv("no_proxy", "c.example")
  monkeypatch.setenv("ftp_proxy", "proxy.example:3129")
  assert tfds_source.download_hosts(Builder()) == {
      ("proxy.example", 3128): "the https proxy set in the environment",
      ("b.example", 8080): "where its files are downloaded from",
      ("c.example", 21): "where its files are downloaded from"}
  Builder.url_infos = None  # TFDS lists no URLs: TFDS's own host stands for the network
  assert list(tfds_source.download_hosts(Builder())) == [("proxy.example", 3128)]
  monkeypatch.delenv("https_proxy")
  assert tfds_source.download_hosts(Builder()) == {
      ("storage.googleapis.com", 443): "where TFDS downloads most data sets from"}
  assert tfds_source.download_hosts(CsgTinyPngs(data_dir=str(tmp_path))) == {}  # placed by hand


def test_one_host_that_answers_is_enough(tmp_path, no_proxy_env):
  """A checksums file may list hosts of earlier versions: only no answer at all stops the run."""
  class Builder:
    data_dir_root = str(tmp_path)
    url_infos = {"https://old.example/x.tgz": None, "https://new.example/x.tgz": None}

  asked = []

  def probe(host, port):
    asked.append((host, port))
    return None if host == "new.example" else "Connection refused"

  tfds_source.check_network("x", Builder(), probe)
  assert sorted(asked) == [("new.example", 443), ("old.example", 443)]
  with pytest.raises(CSGError) as e:
    tfds_source.check_network("x", Builder(), lambda host, port: "Connection refused")
  assert str(e.value).startswith(
      "TFDS data set 'x' cannot be downloaded: old.example:443, where its files are downloaded "
      "from, cannot be reached (Connection refused), nor can any other of the 2 hosts it needs. ")


def test_tfds_warnings_stay_off_the_terminal(tmp_path, caplog, capfd):
  """A version folder without dataset_info.json makes TFDS warn (absl logging) on every look."""
  (tmp_path / "csg_tiny_pngs" / "1.0.0").mkdir(parents=True)
  caplog.set_level(logging.WARNING)
  tfds.builder("csg_tiny_pngs", data_dir=str(tmp_path)).is_prepared()
  assert any("Variant folder" in r.getMessage() for r in caplog.records)  # TFDS's own call warns
  caplog.clear()
  capfd.readouterr()
  with pytest.raises(CSGError, match="'csg_tiny_pngs' is not prepared in data_dir"):
    data.load_dataset(_config(name="csg_tiny_pngs", data_dir=str(tmp_path), download=False))
  assert not caplog.records and "Variant folder" not in capfd.readouterr().err
  assert logging.root.manager.disable == logging.NOTSET
  assert _tree(tmp_path) == {"csg_tiny_pngs", os.path.join("csg_tiny_pngs", "1.0.0")}


@pytest.mark.slow
def test_prepare_tfds_offline_is_one_line_in_seconds(tmp_path):
  """The launcher end to end, its downloads sent to a proxy that refuses: what an offline machine
  sees, on any machine."""
  proxy = f"http://127.0.0.1:{_closed_port()}"
  env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
  env.update(https_proxy=proxy, http_proxy=proxy, HTTPS_PROXY=proxy, HTTP_PROXY=proxy)
  (tmp_path / "tfds" / "keep").mkdir(parents=True)
  before = _tree(tmp_path)
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "prepare_tfds.py"), "--name=mnist",
       f"--data_dir={tmp_path / 'tfds'}"], capture_output=True, text=True, timeout=120, env=env)
  elapsed = time.monotonic() - start
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr[-2000:]  # one line
  assert proc.stderr.startswith("error: TFDS data set 'mnist' cannot be downloaded: 127.0.0.1:")
  assert "the https proxy set in the environment, cannot be reached" in proc.stderr
  assert not proc.stdout.strip(), proc.stdout
  assert elapsed < 60  # imports included; without the check, TFDS retries for about 200 s
  assert _tree(tmp_path) == before
