"""`bench profile`'s reading of a trace: HLO ops by time and by kind."""

import pytest

from sgc_jax.tools import bench_profile

HLO = """HloModule jit_train_step
ENTRY %main {
  %ynn_fusion.2 = f32[8,64,64,128]{3,2,1,0} fusion(%a, %b), kind=kCustom, metadata={op_name="jit(train_step)/jvp(M)/decoder/conv/conv_general_dilated"}
  %ynn_fusion.10 = f32[128,3,3,128]{3,2,1,0} fusion(%c, %d), kind=kCustom
  ROOT %add_fusion.3 = f32[8]{0} fusion(%e), kind=kLoop
}
"""


class _Msg:
  def __init__(self, **kw):
    self.__dict__.update(kw)


def _xspace(events):
  """A stand-in XSpace: one plane whose event metadata ids name the events."""
  names = sorted({name for name, _ in events})
  metadata = {i: _Msg(name=n) for i, n in enumerate(names)}
  ids = {m.name: i for i, m in metadata.items()}
  line = _Msg(name="tf_XLAEigen/1", events=[_Msg(metadata_id=ids[n], duration_ps=ps)
                                            for n, ps in events])
  return _Msg(planes=[_Msg(lines=[line], event_metadata=metadata)])


def test_ops_are_timed_by_name_and_kind():
  definitions = bench_profile.hlo_definitions(HLO)
  assert set(definitions) == {"ynn_fusion.2", "ynn_fusion.10", "add_fusion.3"}
  events = [("ynn_fusion.2", 3e9), ("ynn_fusion.10", 5e9), ("ynn_fusion.2", 1e9),
            ("add_fusion.3", 1e9), ("ThunkExecutor::Execute", 50e9)]  # not an op: left out
  times = bench_profile.op_times(_xspace(events), definitions)
  assert times == {"ynn_fusion.10": 5e9, "ynn_fusion.2": 4e9, "add_fusion.3": 1e9}
  rows, by_kind, total = bench_profile.tables(times, definitions, steps=2, top=5)
  assert total == pytest.approx(5.0)  # ms per step: 10e9 ps over 2 steps
  assert rows[0] == ["2.5", "50.0", "ynn_fusion.10", "f32[128,3,3,128]{3,2,1,0}", ""]
  assert rows[1] == ["2.0", "40.0", "ynn_fusion.2", "f32[8,64,64,128]{3,2,1,0}",
                     "jvp(M)/decoder/conv/conv_general_dilated"]
  assert by_kind == [["4.5", "90.0", "ynn_fusion"], ["0.5", "10.0", "add_fusion"]]
