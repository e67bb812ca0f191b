"""`bench versus-slotcon`'s own pieces, without PyTorch or the official checkout
(neither is in CI): the official model's `args` from our config, the CPU line,
the errors before anything runs, and the roi_align stand-in where torch is."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sgc_jax.configs import slotcon_scenes
from sgc_jax.tools import bench_versus_slotcon

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
  assert bench_versus_slotcon.cpu_description(CPUINFO) == (
      "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "avx2 avx512f")
  assert bench_versus_slotcon.cpu_description("model name : Old\nflags : sse2 avx\n") == (
      "Old", "neither avx2 nor avx512f")
  assert bench_versus_slotcon.cpu_description("") == ("unknown CPU", "neither avx2 nor avx512f")


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
  job = {"config": config, "batch_size": 8, "warmup": 1, "steps": 2}
  result = bench_versus_taming._run_ours(job, str(tmp_path))
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
  from sgc_jax.tools import bench_versus_taming
  (tmp_path / "job.pkl").write_bytes(pickle.dumps({"config": None}))
  with pytest.raises(SystemExit) as failed:
    bench_versus_taming._in_own_process("ours", str(tmp_path))
  assert str(failed.value).splitlines() == [
      "versus-taming: the ours process failed: KeyError: 'batch_size'"]


def test_loss_agreement_is_the_largest_relative_difference():
  from sgc_jax.tools import bench_versus_taming
  assert bench_versus_taming.relative_difference([1.0, 2.2, 3.0], [1.0, 2.0, 3.3]) == (
      pytest.approx(0.1))
  assert bench_versus_taming.relative_difference([0.5], [0.5]) == 0.0


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
