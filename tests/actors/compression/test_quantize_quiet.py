"""ONNX Runtime's quantizer logs on the root logger; quantize_static keeps those lines off the user's terminal."""

from __future__ import annotations

import logging

from actors.compression.quantize import _quiet_root_logger


def test_root_logger_warnings_inside_are_dropped_and_logging_is_left_as_it_was(capsys, caplog) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with _quiet_root_logger():
        logging.warning("Axis 1 is out-of-range for weight 'x' with rank 1")  # what ORT's quantizer does
    assert "out-of-range" not in capsys.readouterr().err
    assert not [r for r in caplog.records if "out-of-range" in r.getMessage()]
    logging.warning("after the block")  # and records outside it still flow
    assert any(r.getMessage() == "after the block" for r in caplog.records)
    assert root.handlers == handlers and root.level == level  # no basicConfig handler left behind
