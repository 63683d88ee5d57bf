"""The example plugin's whole test suite: facekit.testing runs each registration through its contract."""

from facekit.testing import check_architecture, check_reporter


def test_tinycnn_keeps_the_architecture_contract():
    check_architecture("tinycnn")


def test_oneline_keeps_the_reporter_contract(facekit_run, tmp_path):
    check_reporter("oneline", facekit_run, tmp_path / "report")
