from albef_lab.demo import VQA_MINUTES, DemoPaths, vqa_stage_config
from albef_lab.train.engine import train
from tests.helpers import SMALL


def test_the_demo_vqa_stage_makes_its_steps_and_warns_of_no_clock(tmp_path, capsys, demo_files):
    """The demo's VQA fine-tune is a step count with the minutes as a cap: it ends at its last step, saved, and
    prints no clock warning (it once ran "until the clock", asking 7400 steps, and warned on every machine)."""
    world, pre, _ = demo_files
    paths = DemoPaths(tmp_path / "runs", world)
    cfg = vqa_stage_config(paths, progress=False, steps=3, extra=[*SMALL, "model.decoder_layers=1", "data.k_test=4"])
    assert cfg.train.max_minutes == VQA_MINUTES and cfg.train.max_steps == 3
    capsys.readouterr()
    result = train(cfg, "vqa", init=str(pre))
    assert result["step"] == 3 and "clock_cuts" not in result, result
    assert "vqa_acc" in result and paths.vqa.is_file()
    assert "warning: the clock" not in capsys.readouterr().out
