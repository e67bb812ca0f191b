"""`bench convolutions`: one row per shape (two for an upsampling), rates > 0."""

from sgc_jax import bench_convolutions


def test_rows_per_shape_and_positive_rates(monkeypatch):
  monkeypatch.setattr(bench_convolutions, "SHAPES", ((8, 16, 32, False), (8, 16, 16, True)))
  monkeypatch.setattr(bench_convolutions, "REPEATS", 2)
  header, rows = bench_convolutions.convolutions(batch_size=2)
  assert [row[:3] for row in rows] == [["8x8", "16->32", "conv"],
                                       ["16x16", "16->16", "upsample + conv"],
                                       ["16x16", "16->16", "upsample2_conv3x3"]]
  # FLOPs of the plain convolution at the output size, for both upsampling paths.
  assert [row[3] for row in rows] == [f"{2 * 2 * 64 * 9 * 16 * 32 / 1e9:.3g}",
                                      f"{2 * 2 * 256 * 9 * 16 * 16 / 1e9:.3g}",
                                      f"{2 * 2 * 256 * 9 * 16 * 16 / 1e9:.3g}"]
  assert all(len(row) == len(header) for row in rows)
  assert all(float(v) > 0 for row in rows for v in row[4:]), rows
