"""apps/cli/output.py: plans print whole samples, rounded up so the stated risk still holds."""

from __future__ import annotations

import re

from apps.cli.output import whole_samples


def test_plan_rounds_to_whole_samples_upwards_so_the_risk_stays_as_stated():
    got = whole_samples([258.8, 100.3, 0.0], [358.8, 459.1, 459.1], 100)
    assert got == [(259, 359), (101, 460), (0, 460)]
    assert all(isinstance(a, int) and isinstance(t, int) for a, t in got)
    assert all(t >= raw for (_, t), raw in zip(got, [358.8, 459.1, 459.1]))  # never below the planned total
    assert whole_samples([5.0], [105.0], 100) == [(5, 105)]  # whole numbers stay as they are


def test_plan_table_prints_no_fractional_samples(capsys):
    from apps.cli.estimate import _render_plans

    plan = {"curve": "c", "target": 80.0, "n0": 100.0, "expected_cost": 300.2, "risk": 0.1, "status": "plan",
            "note": "", "amounts": [258.8, 100.3], "totals": [358.8, 459.1]}
    _render_plans([plan])
    out = capsys.readouterr().out
    assert "259" in out and "460" in out and not re.search(r"\b(258\.8|358\.8|100\.3|459\.1)\b", out)


def test_a_failed_json_demo_leaves_the_shared_console_printing(tmp_path, monkeypatch, capsys):
    from actors.core.errors import UserError
    from apps.cli import demo
    from apps.cli.main import main
    from apps.cli.output import console

    def broken(*a, **k):
        raise UserError("world: broken on purpose")

    monkeypatch.setattr(demo, "_world", broken)
    assert main(["demo", "--out", str(tmp_path / "d"), "--json"]) == 2
    assert console.quiet is False
    capsys.readouterr()
    console.print("still printing")
    assert "still printing" in capsys.readouterr().out


def test_numbers_in_tables_never_print_in_scientific_notation():
    """#25 item 5: an interval printed as 6.481e+04."""
    from apps.cli.output import fmt

    assert fmt(64810.0) == "64,810" and fmt(12345.6) == "12,346" and fmt(999.5) == "999.5" and fmt(0.1234) == "0.1234"
