"""The versus-* benchmarks' own pieces, without PyTorch or the official
checkouts (neither is in CI): the official models' arguments from our configs,
the CPU line, the starts, the race's processes and errors, and the roi_align
stand-in where torch is."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sgc_jax.configs import slotcon_scenes
from sgc_jax.tools import bench_versus_slotcon, versus

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq
"""


def test_the_official_args_come_from_our_config():
  config = bench_versus_slotcon.like_for_like(slotcon_scenes.get_config("size=64,steps=300"))
  assert tuple(config.model.dilation) == (False, False, False)
  assert config.model.contrast_capacity == 0
  args = bench_versus_slotcon.official_args(config, batch_size=16)
  assert set(bench_versus_slotcon.OFFICIAL_MODEL_FIELDS) <= set(vars(args))
  m = config.model
  assert (args.arch, args.dim_hidden, args.dim_out, args.num_prototypes) == (
      "resnet18", m.dim_hidden, m.dim_out, m.num_prototypes)
  for field in ("teacher_momentum", "teacher_temp", "student_temp", "center_momentum",
                "group_loss_weight"):
    assert getattr(args, field) == m[field]
  # The official momentum schedule's K and k (SlotCon.__init__): K = our steps.
  assert int(args.num_instances / args.world_size / args.batch_size * args.epochs) == 300
  assert int(args.num_instances / args.world_size / args.batch_size * (args.start_epoch - 1)) == 0
  # main_pretrain.build_model's learning rate is ours; warm-up from lr / 100 over ours.
  lr = args.batch_size * args.world_size / 256 * args.base_lr
  assert lr == pytest.approx(config.optimizer.learning_rate)
  assert (args.warmup_epoch, args.warmup_multiplier) == (config.optimizer.warmup_steps, 100)
  assert (args.weight_decay, args.momentum, args.eta) == (1e-5, 0.9, 1e-3)


def test_cpu_model_and_simd_flags_from_cpuinfo():
  assert versus.cpu_description(CPUINFO) == (
      "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "avx2 avx512f")
  assert versus.cpu_description("model name : Old\nflags : sse2 avx\n") == (
      "Old", "neither avx2 nor avx512f")
  assert versus.cpu_description("") == ("unknown CPU", "neither avx2 nor avx512f")


def test_a_missing_or_wrong_checkout_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match=r"needs --official=PATH") as missing:
    bench_versus_slotcon.check_official(None)
  with pytest.raises(SystemExit, match=r"not a SlotCon checkout: no models/slotcon.py"):
    bench_versus_slotcon.check_official(str(tmp_path))
  (tmp_path / "models").mkdir()
  (tmp_path / "utils").mkdir()
  for name in bench_versus_slotcon.OFFICIAL_FILES:
    (tmp_path / name).write_text("")
  assert bench_versus_slotcon.check_official(str(tmp_path)) == str(tmp_path)
  assert "\n" not in str(missing.value.code)


def test_the_subcommand_without_official_prints_one_error_line():
  done = subprocess.run([sys.executable, "-m", "sgc_jax.tools.bench", "versus-slotcon"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      "versus-slotcon needs --official=PATH, a checkout of https://github.com/CVMI-Lab/SlotCon"]


def test_roi_align_stand_in_matches_ours():
  torch = pytest.importorskip("torch")
  import jax.numpy as jnp
  from sgc_jax.models.roi_align import roi_align
  boxes = np.array([[0.0, 0.0, 7.0, 5.0], [1.2, 0.7, 5.9, 4.4], [-2.3, -1.7, 4.1, 3.2],
                    [3.5, 2.2, 9.6, 7.9], [5.0, 4.0, 2.0, 1.0]], np.float32)  # last: empty
  x = np.random.default_rng(0).normal(size=(len(boxes), 3, 5, 7)).astype(np.float32)
  expected = np.asarray(roi_align(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(boxes),
                                  (5, 7), aligned=True, max_samples=(4, 4)))
  rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None],
                    torch.from_numpy(boxes)], 1)
  got = bench_versus_slotcon.roi_align_torch(torch.from_numpy(x), rois, (5, 7), aligned=True)
  np.testing.assert_allclose(got.numpy().transpose(0, 2, 3, 1), expected, atol=1e-5)


# ------------------------------------------------------------------ versus-taming


def test_taming_fields_come_from_our_config():
  from sgc_jax.configs import bench_taming64
  from sgc_jax.tools import bench_versus_taming
  config = bench_taming64.get_config("quantizer=vq")
  fields = bench_versus_taming.taming_fields(config)
  assert fields["ddconfig"] == dict(
      ch=64, out_ch=3, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=[8],
      dropout=0.0, in_channels=3, resolution=64, z_channels=64, double_z=False)
  assert (fields["n_embed"], fields["embed_dim"]) == (1024, 64)
  with pytest.raises(SystemExit, match=r"needs an SGC-VQGAN config, got method 'slotcon'"):
    bench_versus_taming.taming_fields(slotcon_scenes.get_config())


def test_like_for_like_trains_as_taming_does():
  from sgc_jax.configs import bench_taming64
  from sgc_jax.core import optim
  from sgc_jax.tools import bench_versus_taming
  base = bench_taming64.get_config("quantizer=vq")
  with base.unlocked():
    base.model.codebook.update(dict(dim_sem=32, dim_det=32))
    base.ema_decay = 0.999
    base.loss.lpips_weights = "lpips.npz"
  config = bench_versus_taming.like_for_like(base)
  # taming's single z of embed_dim channels; the fields that taming reads unchanged.
  assert (config.model.codebook.dim_sem, config.model.codebook.dim_det) == (64, 0)
  assert bench_versus_taming.taming_fields(config) == bench_versus_taming.taming_fields(base)
  assert (config.data.num_views, config.model.dtype, config.ema_decay) == (1, "float32", 0.0)
  assert config.loss.lpips_weights is None and config.loss.disc_start > 10**9
  opt = config.optimizer
  assert opt.grad_clip == 0
  rate = optim.schedule(opt.learning_rate, config.total_steps, opt.warmup_steps,
                        opt.final_lr_fraction, opt.warmup_start_fraction)
  assert [float(rate(step)) for step in (0, 1, config.total_steps)] == pytest.approx(
      [opt.learning_rate] * 3)
  # sgc keeps its [z_sem ; z_det] pyramid: its step is the method's.
  sgc = bench_versus_taming.like_for_like(bench_taming64.get_config("quantizer=sgc"))
  assert (sgc.model.codebook.dim_sem, sgc.model.codebook.dim_det) == (32, 32)


def test_our_side_starts_from_tamings_weights_with_tamings_loss(tmp_path):
  """Step 0 of our side, from a taming state dict, has taming's loss on those
  weights (NumPy's taming): mean L1 + (1 + beta) x mean squared quantization error."""
  import torch_reference as ref
  from sgc_jax.configs import bench_taming64
  from sgc_jax.tools import bench_versus_taming
  config = bench_taming64.get_config("quantizer=vq")
  with config.unlocked():
    config.data.image_size = config.model.resolution = 16
    config.model.update(dict(ch=32, ch_mult=(1, 2), attn_resolutions=(8,), z_channels=32))
    config.model.codebook.update(dict(num_codes=16, dim_sem=8, dim_det=0))
  config = bench_versus_taming.like_for_like(config)
  sd = ref.taming_state_dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                             z_channels=32, embed_dim=8, num_codes=16)
  bench_versus_taming.write_ours_start(sd, config, str(tmp_path))
  job = {"config": config, "batch_size": 8, "warmup": 1, "steps": 2, "same_views": False}
  result = versus.run_ours(job, str(tmp_path))
  assert len(result["losses"]) == 3 and result["seconds"] > 0

  x = bench_versus_taming._images(config, 8).astype(np.float64)
  numpy_model = ref.Taming(sd, (1, 2), 1, (1,))
  z = numpy_model.tokens(x)
  indices = numpy_model.encode(x)
  quantization = np.mean((z - sd["quantize.embedding.weight"][indices]) ** 2)
  expected = np.mean(np.abs(x - numpy_model.decode(indices))) + 1.25 * quantization
  assert result["losses"][0] == pytest.approx(expected, rel=1e-4)
  assert result["losses"][1] != pytest.approx(expected, rel=1e-3)  # the step moved it


def test_a_failing_side_process_is_one_line(tmp_path):
  import pickle
  (tmp_path / "job.pkl").write_bytes(pickle.dumps({"config": None}))
  for module, subcommand in (("sgc_jax.tools.bench_versus_taming", "versus-taming"),
                             ("sgc_jax.tools.bench_versus_slotcon", "versus-slotcon")):
    with pytest.raises(SystemExit) as failed:
      versus.in_own_process(module, subcommand, "ours", str(tmp_path))
    assert str(failed.value).splitlines() == [
        f"{subcommand}: the ours process failed: AttributeError: 'NoneType' object has no "
        "attribute 'copy_and_resolve_references'"]


def test_loss_agreement_is_the_largest_relative_difference():
  assert versus.relative_difference([1.0, 2.2, 3.0], [1.0, 2.0, 3.3]) == pytest.approx(0.1)
  assert versus.relative_difference([0.5], [0.5]) == 0.0


def test_versus_taming_without_or_with_a_wrong_checkout_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "sgc_jax.tools.bench", "versus-taming",
                         f"--official={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      f"--official={tmp_path} is not a taming-transformers checkout: no "
      "taming/modules/diffusionmodules/model.py, taming/modules/vqvae/quantize.py"]
  from sgc_jax.tools import bench_versus_taming
  with pytest.raises(SystemExit, match=r"versus-taming needs --official=PATH"):
    bench_versus_taming.check_official(None)


# ------------------------------------------------------------------ the race


RACE_SIDES = '''
import os, sys, time
from sgc_jax.tools import versus

def side(name):
  def run(job, work):
    with open(os.path.join(work, "order"), "a") as f:
      f.write(name + "\\n")
    with open(job["log"], "a") as f:
      f.write(name + "\\n")
    if name == "start":
      return None
    losses = job["losses"][name]
    return {"losses": losses, "seconds": job["seconds"][name]}
  return run

SIDES = {name: side(name) for name in ("start", "ours", "official", "official_perturbed")}
if __name__ == "__main__":
  versus.side_main(SIDES, sys.argv)
'''


def test_the_race_runs_the_start_then_alternates_each_side_in_its_own_process(
    tmp_path, monkeypatch):
  (tmp_path / "fake_bench.py").write_text(RACE_SIDES)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.getcwd()]))
  job = {"log": str(tmp_path / "log"), "seconds": {"ours": 2.0, "official": 4.0,
                                                   "official_perturbed": 4.0},
         "losses": {"ours": [1.0, 2.2], "official": [1.0, 2.0],
                    "official_perturbed": [1.0, 2.02]}}
  runs, floor = versus.race("fake_bench", "versus-fake", job, rounds=2, same_start=True)
  assert (tmp_path / "log").read_text().split() == [
      "start", "ours", "official", "ours", "official", "official_perturbed"]
  assert [len(runs["ours"]), len(runs["official"])] == [2, 2]
  assert floor["losses"] == [1.0, 2.02]
  rate, per_round = versus.rates(runs, images_per_step=8, steps=5)
  assert rate == {"ours": pytest.approx(20.0), "official": pytest.approx(10.0)}
  assert per_round == {"ours": "20.00, 20.00", "official": "10.00, 10.00"}
  assert versus.agreement(runs, floor) == ["1.0e-01", "1.0e-02"]
  runs, floor = versus.race("fake_bench", "versus-fake", job, rounds=1, same_start=False)
  assert floor is None and versus.agreement(runs, floor)[1] == "-"


def test_the_perturbed_start_is_one_float32_ulp_away(tmp_path):
  weights = np.array([1.0, -3.5, 1e-20], np.float32)
  versus.save_start(str(tmp_path), {"w": weights, "steps": np.array([7], np.int64)})
  same = versus.read_start(str(tmp_path))
  np.testing.assert_array_equal(same["w"], weights)
  moved = versus.read_start(str(tmp_path), perturbed=True)
  tiny = np.float32(1e-20)
  np.testing.assert_array_equal(
      moved["w"], np.array([1 + 2.0**-23, -3.5 + 2.0**-22, tiny + np.spacing(tiny)], np.float32))
  assert moved["steps"].dtype == np.int64 and moved["steps"][0] == 7


def test_slotcon_our_side_starts_from_the_official_state_dict(tmp_path):
  """An official SlotCon state dict (the importer tests' NumPy one) -> our
  start; our side's first loss is then that of a trainer initialised from it."""
  import test_convert_slotcon as official
  from sgc_jax.convert import slotcon as slotcon_import
  config = bench_versus_slotcon.like_for_like(slotcon_scenes.get_config("size=64"))
  with config.unlocked():
    config.model.update(dict(depth=official.DEPTH, dim_hidden=official.HIDDEN,
                             dim_out=official.OUT, num_prototypes=official.K))
  versus.write_ours_start(slotcon_import.convert(official.official_state_dict(), config.model),
                          str(tmp_path))
  job = {"config": config, "batch_size": 8, "warmup": 1, "steps": 1, "same_views": True}
  started = versus.run_ours(job, str(tmp_path))["losses"]
  fresh = versus.run_ours(job, str(tmp_path / "no_start"))["losses"]
  assert started[0] != pytest.approx(fresh[0], rel=1e-3)
  with config.unlocked():
    config.init_from = str(tmp_path / versus.OURS_START)
  assert started[0] == pytest.approx(float(versus.Ours(config, 8, same_views=True).step()),
                                     rel=1e-6)
