"""`python -m sgc_jax.data.folder` on faulty input: one line on stderr, exit 1, and
nothing prepared before is deleted or replaced."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from sgc_jax.data import folder, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_folder(root, classes="road\ncar\ntree\n", shade=0):
  """Two 8x8 images with label maps; `shade` tells two folders' images apart."""
  os.makedirs(root / "images")
  os.makedirs(root / "labels")
  (root / "classes.txt").write_text(classes)
  for name in ("a", "b"):
    PIL.Image.fromarray(np.full((8, 8, 3), shade, np.uint8)).save(root / "images" / f"{name}.png")
    PIL.Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "labels" / f"{name}.png")
  return root


def _cli(*args, cwd=None):
  """Runs the command line; returns (exit status, stdout, stderr lines)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", "sgc_jax.data.folder", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env,
                          timeout=300, check=False)
  return result.returncode, result.stdout, result.stderr.splitlines()


def _one_error_line(status, stderr, pattern):
  assert status == 1, stderr
  assert len(stderr) == 1, stderr  # one line, no traceback, no library noise
  assert stderr[0].startswith("error: "), stderr
  assert re.search(pattern, stderr[0]), stderr[0]


def _snapshot(directory):
  """Every file under `directory` with its bytes and modification time."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
  return files


def _built_path(stdout):
  line = stdout.strip().splitlines()[-1]
  assert line.startswith("folder:"), stdout
  return line[len("folder:"):]


# Fault 3: two source folders with one basename are two data sets.

def test_another_source_with_the_same_name_is_refused_and_the_first_kept(tmp_path):
  first = _make_folder(tmp_path / "a" / "good", shade=10)
  second = _make_folder(tmp_path / "b" / "good", shade=200)
  data_dir = tmp_path / "dd"
  status, stdout, stderr = _cli(first, f"--data_dir={data_dir}")
  assert status == 0, stderr
  path = _built_path(stdout)
  before = _snapshot(path)

  status, stdout, stderr = _cli(second, f"--data_dir={data_dir}")
  _one_error_line(status, stderr, rf"{path} holds the data set built from {first}, "
                  rf"not {second}; pass --name=.* to prepare {second} as another data set")
  assert stdout == ""
  assert _snapshot(path) == before  # neither deleted nor rebuilt
  assert sorted(os.listdir(data_dir / "seg_folder")) == ["good"]
  with open(os.path.join(path, "metadata.json")) as f:
    assert json.load(f)["source_dir"] == str(first)
  first_pixels = sources.open_dataset(f"folder:{path}", None).split("train")[0]["image"]
  assert (first_pixels == 10).all()

  # The way out the message gives: another name, beside the first.
  status, stdout, stderr = _cli(second, f"--data_dir={data_dir}", "--name=good_b")
  assert status == 0, stderr
  other = _built_path(stdout)
  assert other == str(data_dir / "seg_folder" / "good_b" / "1.0.0")
  assert (sources.open_dataset(f"folder:{other}", None).split("train")[0]["image"] == 200).all()
  assert _snapshot(path) == before

  # The first source again: still reused as it is.
  status, stdout, stderr = _cli(first, f"--data_dir={data_dir}")
  assert status == 0 and _built_path(stdout) == path, stderr
  assert not any("rebuilding" in line for line in stderr)
  assert _snapshot(path) == before


def test_the_same_source_spelled_another_way_is_reused_or_rebuilt(tmp_path):
  source_dir = _make_folder(tmp_path / "good")
  os.symlink(source_dir, tmp_path / "link")
  data_dir = tmp_path / "dd"
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}")
  assert status == 0, stderr
  path = _built_path(stdout)
  before = _snapshot(path)
  # Relative from its parent, through a symbolic link, as ".": one source, reused.
  for args, cwd in [(("good",), tmp_path), ((tmp_path / "link", "--name=good"), None),
                    ((".",), source_dir)]:
    status, stdout, stderr = _cli(*args, f"--data_dir={data_dir}", cwd=cwd)
    assert status == 0, stderr
    assert os.path.realpath(_built_path(stdout)) == os.path.realpath(path), args
    assert not any("rebuilding" in line for line in stderr)
  assert _snapshot(path) == before
  # Changed, it is rebuilt in place, as before.
  PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source_dir / "images" / "c.png")
  PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(source_dir / "labels" / "c.png")
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}")
  assert status == 0 and _built_path(stdout) == path, stderr
  assert any(f"{source_dir} changed since it was built" in line for line in stderr)
  assert len(sources.open_dataset(f"folder:{path}", None).split("train")) == 3


# Fault 4: classes.txt lines are the labels; a blank or repeated line is refused.

@pytest.mark.parametrize("classes, problem", [
    ("sky\n\nwater\ngrass\n", r"line 2 is blank"),
    ("sky\n   \nwater\ngrass", r"line 2 is blank"),
    ("\nsky\nwater\ngrass\n", r"line 1 is blank"),
    ("sky\nwater\ngrass\n\n", r"line 4 is blank"),
    ("sky\nwater\nsky\n", r"line 3 repeats 'sky' \(line 1\)"),
    ("sky\nwater \nwater\n", r"line 3 repeats 'water' \(line 2\)"),
])
def test_blank_or_repeated_class_lines_are_refused(tmp_path, classes, problem):
  source_dir = _make_folder(tmp_path / "src", classes=classes)
  data_dir = tmp_path / "dd"
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}")
  _one_error_line(status, stderr, rf"{source_dir}/classes\.txt: {problem}")
  assert stdout == ""
  assert not os.path.exists(data_dir / "seg_folder" / "src")


@pytest.mark.parametrize("classes", ["sky\nwater\ngrass", "sky\nwater\ngrass\n",
                                     "sky\r\nwater\r\ngrass\r\n", " sky\nwater\t\ngrass\n"])
def test_class_lists_without_blank_lines_build(tmp_path, classes):
  source_dir = _make_folder(tmp_path / "src", classes=classes)
  status, stdout, stderr = _cli(source_dir, f"--data_dir={tmp_path / 'dd'}")
  assert status == 0, stderr
  dataset = sources.open_dataset(f"folder:{_built_path(stdout)}", None)
  assert dataset.class_names == ("sky", "water", "grass")


def test_a_label_map_without_its_image_is_refused(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(source_dir / "labels" / "orphan.png")
  data_dir = tmp_path / "dd"
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}")
  _one_error_line(status, stderr, rf"{source_dir}/labels/orphan\.png: label map without "
                  rf"an image \(no orphan\.png, orphan\.jpg, .* in {source_dir}/images\)")
  assert "folder:" not in stdout  # (TFDS announces the build before it is checked)
  assert _snapshot(data_dir / "seg_folder") == {}  # no data set, not even a part of one
  assert os.path.isfile(source_dir / "labels" / "orphan.png")  # user data stays
  # With --skip_bad it is listed and left out, like any bad file.
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}", "--skip_bad")
  assert status == 0, stderr
  dataset = sources.open_dataset(f"folder:{_built_path(stdout)}", None)
  assert len(dataset.split("train")) == 2
  skipped = dataset.builder.info.metadata["skipped_files"]
  assert len(skipped) == 1 and "labels/orphan.png: label map without an image" in skipped[0]


# Fault 5: --name is a data-set name, never a path.

@pytest.mark.parametrize("name", ["../x", "../good", "a/b", "/tmp/x", "..", ".", "",
                                  "a..b", "x y", "x\\y"])
def test_a_name_that_is_not_plain_is_refused(tmp_path, name):
  source_dir = _make_folder(tmp_path / "good")
  data_dir = tmp_path / "dd"
  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}")
  assert status == 0, stderr
  path = _built_path(stdout)
  before, around = _snapshot(path), sorted(os.listdir(tmp_path))

  status, stdout, stderr = _cli(source_dir, f"--data_dir={data_dir}", f"--name={name}")
  _one_error_line(status, stderr, r"--name " + repr(name).replace("\\", "\\\\") +
                  r": not a plain data-set name \(letters, digits, _, - and \.; "
                  r"no / nor \.\.\)")
  assert stdout == ""
  assert _snapshot(path) == before
  assert sorted(os.listdir(tmp_path)) == around
  assert sorted(os.listdir(data_dir)) == ["downloads", "seg_folder"]
  assert sorted(os.listdir(data_dir / "seg_folder")) == ["good"]


def test_plain_names_are_accepted_by_the_python_api_too(tmp_path):
  source_dir = _make_folder(tmp_path / "good")
  path = folder.prepare(str(source_dir), str(tmp_path / "dd"), name="My_set-2.v1")
  assert path == str(tmp_path / "dd" / "seg_folder" / "My_set-2.v1" / "1.0.0")
  with pytest.raises(sources.DataError, match=r"--name '\.\./x': not a plain data-set name"):
    folder.prepare(str(source_dir), str(tmp_path / "dd"), name="../x")
