"""kernels/static_check.py's SASS reading (the compile itself needs Triton's sm_90 backend: run the script)."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("static_check", Path(__file__).parents[1] / "kernels" / "static_check.py")
static_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(static_check)

SASS = """
--:-:-:-:1	MOV R1, c[0x0][0x28];
LBB0:
--:-:-:-:1	IADD3 R2, R2, 0x1, RZ;
--:-:-:-:6	@!P0 BRA LBB0;
LBB1:
--:-:-:-:1	LDG.E R4, desc[UR4][R2.64];
--:-:-:-:1	QGMMA.64x8x32.F32.E4M3.E4M3 R24, gdesc[UR4], R24;
--:-:-:-:1	FFMA R24, R24, R5, R6;
--:-:-:-:6	@P1 BRA LBB1;
--:-:-:Y:5	BRA LBB2;
LBB2:
--:-:-:-:5	EXIT;
"""


def test_the_k_step_is_the_innermost_loop_holding_an_mma():
    loops = static_check.sass_loops(SASS)
    assert [len(b) for b in loops] == [2, 4]  # forward branches are not loops
    stats = static_check.k_step_stats(SASS)
    assert stats["instructions"] == 4 and stats["mma"] == ["QGMMA.64x8x32.F32.E4M3.E4M3"] and stats["mma_count"] == 1


def test_no_mma_loop_reports_none():
    assert static_check.k_step_stats(SASS.replace("QGMMA", "FADD"))["instructions"] is None
