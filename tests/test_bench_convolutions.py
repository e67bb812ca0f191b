"""`bench convolutions`: one row per shape (two for an upsampling), rates > 0."""

from sgc_jax.tools import bench_convolutions


def test_rows_per_shape_and_positive_rates(monkeypatch):
  # Shapes of tens of MFLOP: rates that round to 0 GFLOP/s only if a pass never ran.
  monkeypatch.setattr(bench_convolutions, "SHAPES", ((16, 64, 64, False), (8, 64, 64, True)))
  monkeypatch.setattr(bench_convolutions, "REPEATS", 3)
  header, rows = bench_convolutions.convolutions(batch_size=2)
  assert [row[:3] for row in rows] == [["16x16", "64->64", "conv"],
                                       ["16x16", "64->64", "upsample + conv"],
                                       ["16x16", "64->64", "upsample2_conv3x3"]]
  # FLOPs of the plain convolution at the output size, for both upsampling paths.
  flops = f"{2 * 2 * 256 * 9 * 64 * 64 / 1e9:.3g}"
  assert [row[3] for row in rows] == [flops] * 3
  assert all(len(row) == len(header) for row in rows)
  assert all(float(v) > 0 for row in rows for v in row[4:]), rows
