from __future__ import annotations

import pytest

from actors.core.errors import UserError
from actors.features.curve import measure_backbone_curve


@pytest.mark.parametrize("fractions", [(), (0.5, 0.25), (0.0, 1.0), (0.5, 1.5)])
def test_fractions_must_increase_in_unit_interval(workspace, fractions):
    with pytest.raises(UserError, match="fractions"):
        measure_backbone_curve(workspace, fractions=fractions)
